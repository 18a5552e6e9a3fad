"""Sample-ahead and TPE's quality: the digits study with TPE, sampling ahead (``true``),
not (``false``) and ``auto`` (the default), over the same seeds, side by side in one run.

Sampling ahead asks Optuna for the next trial while the workers train, so a worker's ask is
a dequeue; the point is sampled with the running trials known to TPE (constant liar) but a
little earlier than a plain ask would. This checks that the best values found stay the same
within noise. Two workers, so trials overlap as they do in real studies (both runs are then
as nondeterministic as Optuna's own ``n_jobs`` studies).

    python -m bench.sample_ahead                 # 30 trials x 10 epochs, seeds 0-2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import optuna


MODES = {"plain": False, "sample-ahead": True, "auto": "auto"}


def run_one(mode: str, seed: int, trials: int, epochs: int, tmp: str) -> tuple[float, float]:
    """(best val_acc, wall seconds) of one study; ``mode``: a key of MODES."""
    from rich.console import Console

    from optsearch.search import config
    from optsearch.search.run import run_study

    name = f"digits-tpe-{mode}-{seed}"
    doc = {"study": {"name": name, "n_trials": trials, "storage": f"sqlite:///{tmp}/a.db",
                     "sampler": {"name": "tpe", "seed": seed, "n_startup_trials": 8}, "pruner": {"name": "none"},
                     "sample_ahead": MODES[mode]},
           "trainer": {"name": "digits", "epochs": epochs},
           "space": {"optimizer": {"adamw": {"lr": {"low": 1e-5, "high": 1.0, "log": True},
                                             "weight_decay": {"low": 1e-4, "high": 1.0, "log": True},
                                             "beta1": {"low": 0.8, "high": 0.99}}},
                     "schedule": {"cosine": {}}},
           "workers": {"count": 2}, "tracking": {"enabled": False}}
    t0 = time.perf_counter()
    run_study(config.validate(doc, "sample_ahead.yaml"), workers=2, console=Console(file=open(os.devnull, "w")))
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/a.db")
    return study.best_value, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="optsearch-ahead-")
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for seed in range(args.seeds):
        for mode in MODES:  # interleaved: the machine's noise falls on all alike
            results[mode].append(run_one(mode, seed, args.trials, args.epochs, tmp))
            print(f"  seed {seed} {mode}: best {results[mode][-1][0]:.4f}, {results[mode][-1][1]:.0f} s", flush=True)
    print(f"digits, TPE, {args.trials} trials x {args.epochs} epochs, 2 workers, seeds 0-{args.seeds - 1}")
    print("| sample_ahead | best val_acc per seed | mean | sd | wall s (mean) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for mode, rows in results.items():
        bests = [b for b, _ in rows]
        sd = statistics.stdev(bests) if len(bests) > 1 else 0.0
        print(f"| {mode} ({MODES[mode]}) | {', '.join(f'{b:.4f}' for b in bests)} | {statistics.mean(bests):.4f} "
              f"| {sd:.4f} | {statistics.mean(w for _, w in rows):.0f} |")


if __name__ == "__main__":
    main()
