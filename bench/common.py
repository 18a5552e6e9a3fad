"""What the CIFAR-10 benchmarks share: where the archive is, and one fixed AdamW setup."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"
PARAMS = {
    "optimizer": {"name": "adamw", "lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                  "weight_decay": 5e-2, "weight_decay_norm": None},
    "schedule": {"name": "cosine", "warmup_epochs": 0, "warmup_start_factor": 0.01, "eta_min": 0.0},
    "param_groups": {"no_decay_bias_norm": True, "head_lr_mult": 1.0, "layer_decay": 1.0},
}
