"""Scale: coordinator latency and memory over a study of thousands of trials.

A driver plays the workers: for each trial it calls the coordinator actor's ask, five
reports and finish (no sleeping: the trial's own time does not matter here) and times
ask-to-finish from the worker's side. Prints median and p99 over the first and the last
200 trials, and the coordinator process's peak memory.

    python -m bench.scale [--trials 5000] [--sampler tpe]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import ray


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5000)
    ap.add_argument("--sampler", default="tpe")
    ap.add_argument("--window", type=int, default=200)
    args = ap.parse_args()
    from optsearch.search import config
    from optsearch.search.coordinator import Coordinator

    tmp = tempfile.mkdtemp(prefix="optsearch-scale-")
    doc = {
        "study": {"name": "scale", "n_trials": args.trials, "storage": f"sqlite:///{tmp}/s.db",
                  "sampler": {"name": args.sampler, "seed": 0}, "pruner": {"name": "median"}},
        "trainer": {"name": "digits"},
        "space": {"optimizer": {"adamw": {"lr": {"low": 1e-5, "high": 1.0, "log": True},
                                          "weight_decay": {"low": 1e-4, "high": 1.0, "log": True}}}},
        "tracking": {"uri": f"sqlite:///{tmp}/m.db", "enabled": True},
    }
    cfg = config.validate(doc, "scale.yaml")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    coord = ray.remote(Coordinator).options(num_cpus=0).remote(cfg)
    ray.get(coord.progress.remote())
    latencies: list[float] = []
    t_all = time.perf_counter()
    for i in range(args.trials):
        t0 = time.perf_counter()
        job = ray.get(coord.ask.remote(0))
        lr = job["params"]["optimizer"]["lr"]
        state = "complete"
        for step in range(1, 6):
            if ray.get(coord.report.remote(job["number"], step, {"val_acc": min(1.0, lr * step)})):
                state = "pruned"
                break
        ray.get(coord.finish.remote(job["number"], state, {"val_acc": min(1.0, lr * 5)}, None, None))
        latencies.append(time.perf_counter() - t0)
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1} trials, last-window median {statistics.median(latencies[-args.window:]) * 1000:.1f} ms",
                  flush=True)
    wall = time.perf_counter() - t_all
    progress = ray.get(coord.progress.remote())
    t0 = time.perf_counter()
    ray.get(coord.close.remote())
    close = time.perf_counter() - t0
    ray.shutdown()
    first, last = latencies[:args.window], latencies[-args.window:]
    print(f"{args.trials} trials ({args.sampler} sampler, median pruner, 5 reports each, MLflow on), {wall:.0f} s")
    print(f"{'window':12} {'median ms':>10} {'p99 ms':>8}")
    print(f"{'first ' + str(args.window):12} {statistics.median(first) * 1000:10.1f} {pct(first, 0.99) * 1000:8.1f}")
    print(f"{'last ' + str(args.window):12} {statistics.median(last) * 1000:10.1f} {pct(last, 0.99) * 1000:8.1f}")
    print(f"coordinator peak RSS: {progress['peak_rss_mb']:.0f} MB; close (flush to SQLite, MLflow) {close:.1f} s")


if __name__ == "__main__":
    main()
