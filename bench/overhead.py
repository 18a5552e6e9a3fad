"""Orchestration overhead: optsearch vs bare Optuna vs Ray Tune, side by side in one run.

Workload: each trial sleeps 50 ms over 5 reports (10 ms each); N trials on 2 workers; each
runner prunes (median pruner; ASHA for Ray Tune), so a pruned trial sleeps less. Ideal wall
time = (reports made) * 10 ms / workers. Per-trial overhead = (wall - ideal) * workers / N:
the worker-seconds each trial costs beyond its own work. Start-up (a new study, a new
MLflow store, worker processes) counts: it is part of what a user waits for.

    python -m bench.overhead [--trials 100] [--workers 2] [--repeat 3] [--skip-tune]

Each round runs every runner once (the order rotating, so none is always first on a machine
that warms up); the medians over rounds come last: this machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each runs every runner once, the order rotating")
    ap.add_argument("--skip-tune", action="store_true")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import ray

    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    runners = [("bare Optuna (SQLite, n_jobs)", lambda tmp: bench_optuna(tmp, args.trials, args.workers)),
               ("optsearch (no MLflow)", lambda tmp: bench_optsearch(tmp, args.trials, args.workers, False)),
               ("optsearch (with MLflow)", lambda tmp: bench_optsearch(tmp, args.trials, args.workers, True))]
    if not args.skip_tune:
        runners.append(("Ray Tune (OptunaSearch+ASHA)", lambda tmp: bench_tune(tmp, args.trials, args.workers)))
    per: dict[str, list[float]] = {name: [] for name, _ in runners}
    last: dict[str, tuple[float, int]] = {}
    print(f"{args.trials} trials x up to {REPORTS} reports x {SLEEP * 1000:.0f} ms, {args.workers} workers, "
          f"{args.repeat} round(s)")
    print(f"{'round':>5} {'runner':32} {'wall s':>8} {'reports':>8} {'ideal s':>8} {'overhead s/trial':>17} "
          f"{'vs Optuna':>10}")
    try:
        for r in range(args.repeat):
            order = runners[r % len(runners):] + runners[:r % len(runners)]  # none always first
            tmp = tempfile.mkdtemp(prefix="optsearch-overhead-")
            try:
                for name, run in order:
                    last[name] = run(tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            for name, _ in runners:
                wall, reports = last[name]
                ideal = reports * SLEEP / args.workers
                per[name].append((wall - ideal) * args.workers / args.trials)
            base = per[runners[0][0]][-1]
            for name, _ in runners:
                wall, reports = last[name]
                print(f"{r + 1:5d} {name:32} {wall:8.2f} {reports:8d} {reports * SLEEP / args.workers:8.2f} "
                      f"{per[name][-1]:17.4f} {per[name][-1] / base:9.2f}x", flush=True)
    finally:
        ray.shutdown()
    base = statistics.median(per[runners[0][0]])
    print(f"\nmedian over {args.repeat} round(s):")
    for name, _ in runners:
        med = statistics.median(per[name])
        print(f"{'':5} {name:32} {'':8} {'':8} {'':8} {med:17.4f} {med / base:9.2f}x")


if __name__ == "__main__":
    main()
