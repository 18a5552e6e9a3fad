"""The trainer interface: ``fit(params, ctx) -> final metrics``.

A trainer is any object with ``fit(params, ctx)``, or a plain function of that signature.
Built-in trainers are classes constructed once per worker with their config options, so
the data they load stays resident for every trial the worker runs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Protocol

import optuna

from optsearch.spaces.build import BuildContext, build

if TYPE_CHECKING:  # torch loads with the trainer that uses it, not with the worker
    import torch


def default_device() -> "torch.device":
    """CUDA when this process sees a GPU (Ray sets CUDA_VISIBLE_DEVICES per actor), else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TrialContext:
    """What a trainer gets besides the params: trial number, seed, device, options, report."""

    def __init__(self, trial_number: int, seed: int, device: "torch.device | None" = None,
                 options: dict | None = None, reporter: Callable[[int, dict], bool] | None = None):
        self.trial_number = trial_number
        self.seed = seed
        self._device = device
        self.options = options or {}  # the trainer's config options, as given
        self.reporter = reporter  # returns True when the trial should stop
        self.budget: BuildContext | None = None  # set by build(): what export needs to rebuild the schedule

    @property
    def device(self) -> "torch.device":
        if self._device is None:
            self._device = default_device()
        return self._device

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Report metrics after ``step`` (an epoch); raises ``optuna.TrialPruned`` on a prune."""
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.reporter is not None and self.reporter(step, metrics):
            raise optuna.TrialPruned(f"pruned at step {step}")

    def build(self, params: dict, model: "torch.nn.Module", *, steps_per_epoch: int, epochs: int,
              batch_size: int = 1, train_size: int = 1):
        """The optimizer and per-batch scheduler the params describe (``spaces.build``)."""
        self.budget = BuildContext(steps_per_epoch, epochs, batch_size, train_size)
        return build(params, model, self.budget)


class Trainer(Protocol):
    def fit(self, params: dict, ctx: TrialContext) -> dict[str, float]: ...


class FunctionTrainer:
    """Adapts a user's ``fit(params, ctx)`` function to the Trainer protocol."""

    def __init__(self, func: Callable[[dict, TrialContext], dict]):
        self.func = func

    def fit(self, params: dict, ctx: TrialContext) -> dict[str, float]:
        return self.func(params, ctx)


def options_from(cls: type, options: dict, key: str = "trainer") -> Any:
    """Build a trainer's options dataclass from config, with one-line errors for bad keys."""
    from optsearch.errors import ConfigError

    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in options.items():
        if k not in fields:
            raise ConfigError(f"{key}.{k}", v, f"unknown option; allowed: {sorted(fields)}")
    obj = cls(**options)
    check = getattr(obj, "validate", None)
    if check:
        for fname, message in check():
            raise ConfigError(f"{key}.{fname}", getattr(obj, fname), message)
    return obj


def seed_everything(seed: int) -> None:
    """Seed random, numpy and (when loaded) torch."""
    import random
    import sys

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
