"""One CIFAR-10 trial with a fixed SGD+Nesterov setup: does the trainer's recipe learn?

On a GPU, the full run is the claim to check (default options, 10 epochs: at least 93%
test accuracy on the JPEG archive) and the time to reach 94%. On a CPU, a subset shows the
recipe learns. Prints val/test accuracy per epoch and the time.

    python -m bench.recipe                                       # CPU: 10,000 images, 4 epochs
    python -m bench.recipe --train-subset 0 --epochs 10          # the full run (GPU)
"""

from __future__ import annotations

import argparse
import time

from bench.common import ARCHIVE

SGD = {
    "optimizer": {"name": "sgd", "lr": 0.4, "momentum": 0.85, "nesterov": True, "dampening": 0.0,
                  "weight_decay": 5e-4, "weight_decay_norm": None},
    "schedule": {"name": "onecycle", "pct_start": 0.23, "div_factor": 10.0, "final_div_factor": 100.0,
                 "anneal_strategy": "linear", "three_phase": False, "cycle_momentum": False,
                 "base_momentum": 0.85, "max_momentum": 0.95},
    "param_groups": {"no_decay_bias_norm": True, "head_lr_mult": 1.0, "layer_decay": 1.0},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-subset", type=int, default=10_000, help="0: all 45,000 training images")
    ap.add_argument("--root", default=str(ARCHIVE))
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--lr", type=float, default=SGD["optimizer"]["lr"])
    ap.add_argument("--target", type=float, default=0.94, help="say whether the final test accuracy reaches it")
    args = ap.parse_args()

    from optsearch.trainers.base import TrialContext, options_from
    from optsearch.trainers.cifar10 import Cifar10Options, Cifar10Trainer

    options = {"epochs": args.epochs, "root": args.root, "cache_dir": args.cache_dir,
               "train_subset": args.train_subset or None}
    trainer = Cifar10Trainer(options_from(Cifar10Options, options))
    params = {**SGD, "optimizer": {**SGD["optimizer"], "lr": args.lr}}
    t0 = time.perf_counter()
    trainer.setup(params, TrialContext(0, 0))  # loads and caches the data; not timed below
    load = time.perf_counter() - t0
    log = []

    def reporter(step: int, metrics: dict) -> bool:
        log.append((step, time.perf_counter() - start, metrics))
        print(f"  epoch {step}: val_acc {metrics['val_acc']:.4f}  train_loss {metrics['train_loss']:.3f}  "
              f"{log[-1][1]:.1f} s", flush=True)
        return False

    ctx = TrialContext(0, 0, reporter=reporter)
    start = time.perf_counter()
    final = trainer.fit(params, ctx)
    total = time.perf_counter() - start
    images = options["train_subset"] or 45_000
    print(f"device {ctx.device}, {images} training images, {args.epochs} epochs, data load {load:.1f} s")
    print(f"final: val_acc {final['val_acc']:.4f}  test_acc {final['test_acc']:.4f}  in {total:.1f} s "
          f"({images * args.epochs / total:.0f} train img/s incl. evaluation)")
    if final["test_acc"] >= args.target:
        print(f"test accuracy >= {args.target} after {args.epochs} epochs, {total:.1f} s")


if __name__ == "__main__":
    main()
