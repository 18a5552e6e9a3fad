"""Orchestration overhead: optsearch vs bare Optuna vs Ray Tune, side by side in one run.

Workload: each trial sleeps 50 ms over 5 reports (10 ms each); N trials on 2 workers; each
runner prunes (median pruner; ASHA for Ray Tune), so a pruned trial sleeps less. Ideal wall
time = (reports made) * 10 ms / workers. Per-trial overhead = (wall - ideal) * workers / N:
the worker-seconds each trial costs beyond its own work. Start-up (a new study, a new
MLflow store, worker processes) counts: it is part of what a user waits for.

    python -m bench.overhead [--trials 100] [--workers 2] [--repeat 3] [--skip-tune]

Each round runs every runner once, in a fresh Python process (as a user runs one study per
process: no runner finds imports another left warm), and each runner on a fresh local Ray
that has settled (as each ``optsearch study`` starts its own: its start, workers Ray
prestarts included, is not timed); the medians over rounds come last, since this machine's
speed drifts between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import optuna

SLEEP, REPORTS = 0.010, 5


def sleep_fit(params, ctx):
    """A trainer that only sleeps: 5 reports of 10 ms."""
    x = params["optimizer"]["lr"]
    for step in range(REPORTS):
        time.sleep(SLEEP)
        ctx.report(step + 1, {"val_acc": x * (step + 1)})
    return {"val_acc": x * REPORTS}


def bench_optuna(tmp: str, trials: int, workers: int) -> float:
    storage = f"sqlite:///{tmp}/optuna.db"

    def objective(trial):
        x = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        for step in range(REPORTS):
            time.sleep(SLEEP)
            trial.report(x * (step + 1), step + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x * REPORTS

    t0 = time.perf_counter()
    study = optuna.create_study(storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0), pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=trials, n_jobs=workers)
    wall = time.perf_counter() - t0
    return wall, sum(len(t.intermediate_values) for t in study.trials)


def bench_optsearch(tmp: str, trials: int, workers: int, tracking: bool) -> float:
    from optsearch.search import config
    from optsearch.search.run import run_study
    from rich.console import Console

    doc = {
        "study": {"name": "overhead", "n_trials": trials, "storage": f"sqlite:///{tmp}/optsearch-{tracking}.db",
                  "sampler": {"name": "tpe", "seed": 0}, "pruner": {"name": "median"}},
        "trainer": {"target": "bench.overhead:sleep_fit"},
        "space": {"optimizer": {"adamw": {"lr": {"low": 1e-4, "high": 1.0, "log": True}}}},
        "workers": {"count": workers},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow-{tracking}.db", "enabled": tracking},
    }
    cfg = config.validate(doc, "overhead.yaml")
    t0 = time.perf_counter()
    run_study(cfg, console=Console(file=open(os.devnull, "w")))
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name="overhead", storage=doc["study"]["storage"])
    return wall, sum(len(t.intermediate_values) for t in study.trials)


def bench_tune(tmp: str, trials: int, workers: int) -> float:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config):
        for step in range(REPORTS):
            time.sleep(SLEEP)
            tune.report({"val_acc": config["lr"] * (step + 1)})

    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"lr": tune.loguniform(1e-4, 1.0)},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=trials, max_concurrent_trials=workers,
            search_alg=OptunaSearch(seed=0), scheduler=ASHAScheduler(max_t=REPORTS, grace_period=1),
        ),
        run_config=tune.RunConfig(storage_path=f"{tmp}/tune", verbose=0),
    )
    results = tuner.fit()
    wall = time.perf_counter() - t0
    return wall, int(sum(r.metrics.get("training_iteration", 0) for r in results))


RUNNERS = ("bare Optuna (SQLite, n_jobs)", "optsearch (no MLflow)", "optsearch (with MLflow)",
           "Ray Tune (OptunaSearch+ASHA)")


def settle(timeout: float = 10.0, idle: float = 0.9, window: float = 0.2) -> float:
    """Wait until this machine's CPUs are at least ``idle`` idle over two windows in a row
    (Linux's /proc/stat; elsewhere two seconds), so that no runner pays for what the one
    before it left running. Returns the seconds waited."""
    t0 = time.perf_counter()

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, all

    try:
        quiet, last = 0, ticks()
        while quiet < 2 and time.perf_counter() - t0 < timeout:
            time.sleep(window)
            now = ticks()
            spent = now[1] - last[1]
            quiet = quiet + 1 if spent and (now[0] - last[0]) / spent >= idle else 0
            last = now
    except OSError:
        time.sleep(2.0)
    return time.perf_counter() - t0


def one_round(trials: int, workers: int, skip_tune: bool) -> dict[str, tuple[float, int]]:
    """Every runner once, in this order, in this process, each on a fresh local Ray (started
    as optsearch starts its own; neither its start nor the wait for a quiet machine is timed).

    A fresh Ray per runner, as each ``optsearch study`` starts its own: a runner that came
    after another on the same Ray did not find the worker processes Ray prestarts (the one
    before used them up: a killed actor's process exits), so it started its actors'
    processes on the clock (its first actor 0.4 s later, seen in a trace of this bench).
    Bare Optuna runs beside an idle Ray too."""
    import ray

    from optsearch.search.run import start_local_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = tempfile.mkdtemp(prefix="optsearch-overhead-")
    runs = [(RUNNERS[0], lambda: bench_optuna(tmp, trials, workers)),
            (RUNNERS[1], lambda: bench_optsearch(tmp, trials, workers, False)),
            (RUNNERS[2], lambda: bench_optsearch(tmp, trials, workers, True))]
    if not skip_tune:
        runs.append((RUNNERS[3], lambda: bench_tune(tmp, trials, workers)))
    out = {}
    try:
        for name, runner in runs:
            start_local_ray(workers)  # as optsearch starts its Ray
            settle()
            try:
                out[name] = runner()
            finally:
                ray.shutdown()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="rounds, each in a fresh Python process")
    ap.add_argument("--skip-tune", action="store_true")
    ap.add_argument("--round-json", help=argparse.SUPPRESS)  # internal: run one round, write its figures here
    args = ap.parse_args()
    if args.round_json:
        with open(args.round_json, "w") as f:
            json.dump(one_round(args.trials, args.workers, args.skip_tune), f)
        return
    print(f"{args.trials} trials x up to {REPORTS} reports x {SLEEP * 1000:.0f} ms, {args.workers} workers, "
          f"{args.repeat} round(s)")
    print(f"{'round':>5} {'runner':32} {'wall s':>8} {'reports':>8} {'ideal s':>8} {'overhead s/trial':>17} "
          f"{'vs Optuna':>10}")
    per: dict[str, list[float]] = {}
    for r in range(args.repeat):
        # A fresh process per round, as a user runs one study per process: no runner finds
        # the imports and caches another left warm.
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, "-m", "bench.overhead", "--trials", str(args.trials), "--workers",
                   str(args.workers), "--round-json", out.name] + (["--skip-tune"] if args.skip_tune else [])
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            rows = json.load(open(out.name))
        base = None
        for name, (wall, reports) in rows.items():
            ideal = reports * SLEEP / args.workers
            overhead = (wall - ideal) * args.workers / args.trials
            base = overhead if base is None else base
            per.setdefault(name, []).append(overhead)
            print(f"{r + 1:5d} {name:32} {wall:8.2f} {reports:8d} {ideal:8.2f} {overhead:17.4f} "
                  f"{overhead / base:9.2f}x", flush=True)
    base = statistics.median(per[RUNNERS[0]])
    print(f"\nmedian over {args.repeat} round(s): of the overheads, their ratio; and of each round's own ratio "
          "(paired: the runners of a round ran back to back)")
    for name, values in per.items():
        med = statistics.median(values)
        paired = statistics.median(v / b for v, b in zip(values, per[RUNNERS[0]]))
        print(f"{'':5} {name:32} {'':8} {'':8} {'':8} {med:17.4f} {med / base:9.2f}x {paired:9.2f}x paired")


if __name__ == "__main__":
    main()
