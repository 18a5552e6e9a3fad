"""Pruning savings: the same study with no pruner, median, hyperband and their
schedule-aware forms.

The random sampler with a fixed seed draws the same sequence of configs whatever the
pruner does, so each pruner sees the same trials and only the epochs it spends differ;
"kept best" says in how many seeds the trial that is best without pruning ran to its end.
One worker keeps the order of reports (and so every pruning decision) reproducible.

    python -m bench.pruning                                  # digits, cosine, 3 seeds
    python -m bench.pruning --schedule sgdr                  # warm restarts (T_0, T_mult searched)
    python -m bench.pruning --schedule onecycle
    python -m bench.pruning --task cifar10 --root ../shared/datasets/cifar10-jpeg.tar.xz \
        --trials 12 --epochs 6 --seeds 1 --set train_subset=2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import optuna
import yaml

PRUNERS = {
    "none": {"name": "none"},
    "median": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
    "median+aware": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1, "schedule_aware": True},
    "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 5},
    "hyperband+aware": {"name": "hyperband", "min_resource": 1, "reduction_factor": 5, "schedule_aware": True},
}
SCHEDULES = {
    "cosine": {"cosine": {"warmup_epochs": 1}},
    "sgdr": {"sgdr": {"T_0": {"choices": [1.0, 2.0, 3.0]}, "T_mult": {"choices": [1, 2]}}},
    "onecycle": {"onecycle": {"pct_start": {"low": 0.15, "high": 0.5}}},
}


def run_one(task: str, pruner: str, seed: int, trials: int, epochs: int, extra: dict, tmp: str,
            schedule: str = "cosine") -> tuple[int, float, dict]:
    """(epochs spent, best value, {trial number: ran to its end}) of one study."""
    from rich.console import Console

    from optsearch.search import config
    from optsearch.search.run import run_study

    trainer = {"name": task, "epochs": epochs, **extra}
    space = {"optimizer": {"adamw": {"lr": {"low": 1e-5, "high": 1.0, "log": True},
                                     "weight_decay": {"low": 1e-4, "high": 1.0, "log": True}}},
             "schedule": SCHEDULES[schedule]}
    name = f"{task}-{schedule}-{pruner}-{seed}"
    doc = {"study": {"name": name, "n_trials": trials, "storage": f"sqlite:///{tmp}/p.db",
                     "sampler": {"name": "random", "seed": seed}, "pruner": PRUNERS[pruner]},
           "trainer": trainer, "space": space, "workers": {"count": 1}, "tracking": {"enabled": False}}
    run_study(config.validate(doc, "pruning.yaml"), workers=1, console=Console(file=open(os.devnull, "w")))
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/p.db")
    spent = sum(len(t.intermediate_values) for t in study.trials)
    finished = {t.number: t.state == optuna.trial.TrialState.COMPLETE for t in study.trials}
    return spent, study.best_value, finished


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="digits", choices=["digits", "cifar10"])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--root", default=None, help="cifar10: image folder or archive")
    ap.add_argument("--schedule", default="cosine", choices=sorted(SCHEDULES))
    ap.add_argument("--pruner", dest="pruners", action="append", default=[],
                    help="NAME=YAML pruner config, e.g. 'hyperband={name: hyperband, reduction_factor: 4}'")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="trainer option KEY=VALUE")
    args = ap.parse_args()
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.extra)}
    if args.root:
        extra["root"] = args.root
    for text in args.pruners:
        name, spec = text.split("=", 1)
        PRUNERS[name] = yaml.safe_load(spec)
    import ray

    from optsearch.search.run import start_local_ray

    start_local_ray(2)  # as optsearch starts its Ray
    tmp = tempfile.mkdtemp(prefix="optsearch-pruning-")
    results: dict[str, list] = {p: [] for p in PRUNERS}
    for seed in range(args.seeds):
        for pruner in PRUNERS:
            results[pruner].append(run_one(args.task, pruner, seed, args.trials, args.epochs, extra, tmp, args.schedule))
            print(f"  seed {seed} {pruner:16} epochs {results[pruner][-1][0]:5d}  best {results[pruner][-1][1]:.4f}",
                  flush=True)
    ray.shutdown()
    full = results["none"]
    best_trials = []  # per seed: the trials that are best without pruning (ties: all of them)
    for seed in range(args.seeds):
        study = optuna.load_study(study_name=f"{args.task}-{args.schedule}-none-{seed}", storage=f"sqlite:///{tmp}/p.db")
        best_trials.append({t.number for t in study.trials if t.value == study.best_value})
    print(f"{args.task}, {args.schedule}: {args.trials} trials x {args.epochs} epochs, {args.seeds} seed(s), "
          "random sampler")
    print(f"{'pruner':16} {'epochs (mean)':>14} {'saving':>7} {'best val_acc':>13} {'vs none':>9} {'kept best':>10}")
    for pruner, rows in results.items():
        epochs = statistics.mean(r[0] for r in rows)
        best = statistics.mean(r[1] for r in rows)
        saving = statistics.mean(f[0] for f in full) / epochs
        delta = 100 * statistics.mean(r[1] - f[1] for r, f in zip(rows, full))
        kept = sum(any(r[2].get(n) for n in b) for r, b in zip(rows, best_trials))
        print(f"{pruner:16} {epochs:14.1f} {saving:6.2f}x {best:13.4f} {delta:+8.2f}p {kept:>6}/{len(rows)}")


if __name__ == "__main__":
    main()
