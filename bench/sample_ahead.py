"""Sample-ahead keeps TPE's quality: the digits study with TPE, sampling ahead and not,
over the same seeds, side by side in one run.

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


def run_one(ahead: bool, seed: int, trials: int, epochs: int, tmp: str) -> tuple[float, float]:
    """(best val_acc, wall seconds) of one study."""
    from rich.console import Console

    from optsearch.search import config
    from optsearch.search.run import run_study

    name = f"digits-tpe-{'ahead' if ahead else 'plain'}-{seed}"
    doc = {"study": {"name": name, "n_trials": trials, "storage": f"sqlite:///{tmp}/a.db",
                     "sampler": {"name": "tpe", "seed": seed, "n_startup_trials": 8}, "pruner": {"name": "none"},
                     "sample_ahead": ahead},
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
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for seed in range(args.seeds):
        for ahead in (False, True):  # interleaved: the machine's noise falls on both alike
            results[ahead].append(run_one(ahead, seed, args.trials, args.epochs, tmp))
            print(f"  seed {seed} {'sample-ahead' if ahead else 'plain TPE'}: best {results[ahead][-1][0]:.4f}, "
                  f"{results[ahead][-1][1]:.0f} s", flush=True)
    print(f"digits, TPE, {args.trials} trials x {args.epochs} epochs, 2 workers, seeds 0-{args.seeds - 1}")
    print("| TPE | best val_acc per seed | mean | sd | wall s (mean) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for ahead in (False, True):
        bests = [b for b, _ in results[ahead]]
        sd = statistics.stdev(bests) if len(bests) > 1 else 0.0
        print(f"| {'sample-ahead' if ahead else 'plain'} | {', '.join(f'{b:.4f}' for b in bests)} "
              f"| {statistics.mean(bests):.4f} | {sd:.4f} | {statistics.mean(w for _, w in results[ahead]):.0f} |")


if __name__ == "__main__":
    main()
