"""The trainer interface: ``fit(params, ctx) -> final metrics``.

A trainer is any object with ``fit(params, ctx)``, or a plain function of that signature.
Built-in trainers are classes constructed once per worker with their config options, so
the data they load stays resident for every trial the worker runs.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Protocol

import optuna

from optsearch.errors import ConfigError, PointRejected
from optsearch.spaces.build import BuildContext, build
from optsearch.spaces.groups import GroupsError

if TYPE_CHECKING:  # torch loads with the trainer that uses it, not with the worker
    import torch

    from optsearch.constraints import Constraint


def default_device() -> "torch.device":
    """CUDA when this process sees a GPU (Ray sets CUDA_VISIBLE_DEVICES per actor), else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TrialFailed(Exception):
    """Raised by ``ctx.report`` when the coordinator fails the trial (a non-finite metric)."""

    def __init__(self, reason: str):
        from optsearch.search.protocol import Failure

        self.reason, self.failure = reason, Failure.NON_FINITE
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


class TrialContext:
    """What a trainer gets besides the params: trial number, seed, device, options, report."""

    def __init__(self, trial_number: int, seed: int, device: "torch.device | None" = None,
                 options: dict | None = None, reporter: Callable[[int, dict], Any] | None = None):
        self.trial_number = trial_number
        self.seed = seed
        self._device = device
        self.options = options or {}  # the trainer's config options, as given
        self.reporter = reporter  # (step, metrics) -> protocol.Answer
        self.built: BuildContext | None = None  # set by build(): the training budget export rebuilds from

    @property
    def device(self) -> "torch.device":
        if self._device is None:
            self._device = default_device()
        return self._device

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Report metrics after ``step`` (an epoch). Raises ``optuna.TrialPruned`` when the
        pruner stops the trial, ``TrialFailed`` when it must fail (the study metric is NaN or
        inf, with ``study.nan: fail``): let both propagate."""
        metrics = {k: float(v) for k, v in metrics.items()}
        answer = self.reporter(step, metrics) if self.reporter is not None else None
        if not answer:  # None or False (a reporter that only records)
            return
        if answer is True:
            raise optuna.TrialPruned(f"pruned at step {step}")
        if answer.fail:
            raise TrialFailed(answer.fail)
        if answer.prune:
            raise optuna.TrialPruned(f"pruned at step {step}")

    def build(self, params: dict, model: "torch.nn.Module", *, steps_per_epoch: int, epochs: int,
              batch_size: int | None = None, train_size: int | None = None):
        """The optimizer and per-batch scheduler the params describe (``spaces.build``).

        ``batch_size`` and ``train_size`` are needed by ``weight_decay_norm``. Errors:

        - ``PointRejected``: the builders reject this trial's sampled point (a warmup
          longer than the first milestone at this budget, ...). The trial fails with the
          reason; the study goes on.
        - ``ConfigError``: the trainer's budget is invalid, weight_decay_norm lacks
          ``batch_size`` / ``train_size``, or the model cannot be split as
          ``space.param_groups`` asks (no head found, tied head). These hold for every
          trial, so they stop the study (exit 2) rather than fail its whole budget.
        """
        budget = BuildContext(steps_per_epoch, epochs, batch_size, train_size).check("ctx.build")
        opt = params.get("optimizer") if isinstance(params, dict) else None
        if isinstance(opt, dict) and opt.get("weight_decay_norm") is not None and None in (batch_size, train_size):
            raise ConfigError("ctx.build", {"batch_size": batch_size, "train_size": train_size},
                              "weight_decay_norm needs the trainer to pass batch_size and train_size")
        self.built = budget
        try:
            return build(params, model, budget)
        except GroupsError as err:
            raise ConfigError("space.param_groups", params.get("param_groups"), str(err)) from None
        except ConfigError as err:
            raise PointRejected(f"rejected by the builders: {err}") from None

    def train_mode(self, optimizer) -> None:
        """Call before training steps (each epoch). A schedule-free optimizer (``sf_adamw``,
        ``sf_sgd``) moves the parameters to the point where it takes gradients
        (``optimizer.train()``); a no-op for other optimizers."""
        from optsearch.spaces.schedule_free import train_mode

        train_mode(optimizer)

    def eval_mode(self, optimizer, model, batches=None) -> int:
        """Call before evaluating (or saving) the model. A schedule-free optimizer moves the
        parameters to its averaged iterate (``optimizer.eval()``), and the model's BatchNorm
        statistics are recomputed there from ``batches`` (training inputs: an iterable, or a
        function returning one, called only then; a plain average over them). Returns the
        number of batches used; a no-op (0) for other optimizers and models without
        BatchNorm. Call ``train_mode`` before training again."""
        from optsearch.spaces.schedule_free import eval_mode

        return eval_mode(optimizer, model, batches)


class Trainer(Protocol):
    def fit(self, params: dict, ctx: TrialContext) -> dict[str, float]: ...


class FunctionTrainer:
    """Adapts a user's ``fit(params, ctx)`` function to the Trainer protocol."""

    def __init__(self, func: Callable[[dict, TrialContext], dict]):
        self.func = func

    def fit(self, params: dict, ctx: TrialContext) -> dict[str, float]:
        return self.func(params, ctx)


def option(default: Any, constraint: "Constraint", doc: str = "") -> Any:
    """A trainer option: a dataclass field that carries its constraint
    (``optsearch.constraints``), checked by ``options_from`` like every other config key."""
    meta = {"constraint": constraint, "doc": doc}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def options_from(cls: type, options: dict, key: str = "trainer") -> Any:
    """A trainer's options dataclass from config: unknown keys and values that break a
    field's constraint (``option(...)``) are one-line ``ConfigError``s; then the class's
    own ``validate()`` (cross-option rules) yields ``(option, message)`` pairs."""
    from optsearch.constraints import check

    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in options.items():
        if k not in fields:
            raise ConfigError(f"{key}.{k}", v, f"unknown option; allowed: {sorted(fields)}")
    obj = cls(**options)
    for name, f in fields.items():
        if "constraint" in f.metadata:
            check(f"{key}.{name}", getattr(obj, name), f.metadata["constraint"])
    validate = getattr(obj, "validate", None)
    if validate:
        for fname, message in validate():
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
