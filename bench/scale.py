"""Scale: coordinator latency and memory over a study of thousands of trials.

A driver plays the workers: for each trial it asks the coordinator actor for a job, makes
five reports and finishes it (no training: the trial's own time does not matter here)
and times ask-to-finish from the worker's side. ``--think`` seconds pass between a trial's
finish and the next ask, as a worker's next trial would take: sample-ahead (the default)
samples then, so the ask is a dequeue; with ``--sample-ahead false`` every ask samples.
Prints median and p99 over the first and the last 200 trials, and the coordinator
process's peak memory.

    python -m bench.scale [--trials 5000] [--sampler random --sampler tpe] [--think 0.05] [--sample-ahead auto|true|false]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import ray
from optuna.trial import TrialState


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(sampler: str, args, tmp: str) -> dict:
    """One study of ``args.trials`` through a real coordinator actor; its latencies."""
    from optsearch.search import config
    from optsearch.search import study as studies
    from optsearch.search.coordinator import Coordinator
    from optsearch.search.protocol import Outcome

    doc = {
        "study": {"name": f"scale-{sampler}", "n_trials": args.trials, "storage": f"sqlite:///{tmp}/{sampler}.db",
                  "sampler": {"name": sampler, "seed": 0}, "pruner": {"name": "median"},
                  "sample_ahead": args.ahead},
        "trainer": {"name": "digits"},
        "space": {"optimizer": {"adamw": {"lr": {"low": 1e-5, "high": 1.0, "log": True},
                                          "weight_decay": {"low": 1e-4, "high": 1.0, "log": True}}}},
        "tracking": {"uri": f"sqlite:///{tmp}/m-{sampler}.db", "enabled": args.mlflow},
    }
    cfg = config.validate(doc, "scale.yaml")
    prepared = studies.prepare(cfg)
    coord = ray.remote(Coordinator).options(num_cpus=0).remote(cfg, prepared.owner)
    ray.get(coord.progress.remote())
    latencies: list[float] = []
    t_all = time.perf_counter()
    for i in range(args.trials):
        t0 = time.perf_counter()
        job = ray.get(coord.ask.remote(0))
        lr = job.params["optimizer"]["lr"]
        state = TrialState.COMPLETE
        for step in range(1, 6):
            if ray.get(coord.report.remote(job.number, step, {"val_acc": min(1.0, lr * step)})).prune:
                state = TrialState.PRUNED
                break
        ray.get(coord.finish.remote(job.number, Outcome(state, {"val_acc": min(1.0, lr * 5)})))
        latencies.append(time.perf_counter() - t0)
        if args.think:
            time.sleep(args.think)
        if (i + 1) % 1000 == 0:
            print(f"  {sampler}: {i + 1} trials, last-window median "
                  f"{statistics.median(latencies[-args.window:]) * 1000:.1f} ms", flush=True)
    wall = time.perf_counter() - t_all
    rss = ray.get(coord.peak_rss_mb.remote())
    t0 = time.perf_counter()
    ray.get(coord.close.remote())
    close = time.perf_counter() - t0
    ray.kill(coord)
    studies.release_claim(cfg.study, prepared.owner)
    first, last = latencies[:args.window], latencies[-args.window:]
    return {"sampler": sampler, "wall": wall, "close": close, "rss": rss,
            "first": (statistics.median(first), pct(first, 0.99)), "last": (statistics.median(last), pct(last, 0.99))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5000)
    ap.add_argument("--sampler", dest="samplers", action="append", default=[],
                    help="repeatable; default: random and tpe, side by side in this run")
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--think", type=float, default=0.05, help="seconds between a finish and the next ask")
    ap.add_argument("--sample-ahead", dest="ahead", default="auto", type=lambda v: {"true": True, "false": False}.get(v, v),
                    choices=["auto", True, False], help="study.sample_ahead: auto (the default), true, false")
    ap.add_argument("--mlflow", action="store_true", help="track in MLflow too")
    args = ap.parse_args()
    samplers = args.samplers or ["random", "tpe"]
    tmp = tempfile.mkdtemp(prefix="optsearch-scale-")
    from optsearch.search.run import start_local_ray

    start_local_ray(2)  # as optsearch starts its Ray
    rows = [run(s, args, tmp) for s in samplers]
    ray.shutdown()
    ahead = f"sample_ahead: {str(args.ahead).lower()}"
    print(f"{args.trials} trials each ({ahead}, think {args.think * 1000:.0f} ms, median pruner, "
          f"5 reports each, MLflow {'on' if args.mlflow else 'off'})")
    base = rows[0]["last"][0]
    print(f"| sampler | median, first {args.window} | p99, first {args.window} | median, last {args.window} "
          f"| p99, last {args.window} | last median vs {rows[0]['sampler']} | coordinator peak RSS | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['sampler']} | {r['first'][0] * 1000:.1f} ms | {r['first'][1] * 1000:.1f} ms "
              f"| {r['last'][0] * 1000:.1f} ms | {r['last'][1] * 1000:.1f} ms | {r['last'][0] / base:.2f}x "
              f"| {r['rss']:.0f} MB | {r['wall']:.0f} |")


if __name__ == "__main__":
    main()
