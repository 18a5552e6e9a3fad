"""The messages between the driver, the coordinator and the workers: small frozen dataclasses.

A trial's state is Optuna's ``TrialState`` from end to end; ``tracking`` maps it to MLflow's
run status in one place. ``Failure`` says why a FAIL trial failed, which decides whether it
spends the study's budget:

- counted (the trial's own doing): ``trainer`` (the trainer raised), ``non_finite`` (a metric
  was NaN or inf), ``rejected`` (the builders rejected the sampled point), ``timeout``
  (it ran past ``study.trial_timeout``), and a crash whose retries are used up;
- retried, not counted (the infrastructure's doing): ``crash`` (the trainer's process died:
  a segfault, ``os._exit``, out of memory, a SIGKILL), ``lost`` (the worker actor or its node
  died), ``interrupted`` (Ctrl-C, or the driver died). The same params run again as a new
  trial (``study.enqueue_trial``); a crash or a loss counts an attempt, an interruption not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from optuna.trial import TrialState


class Failure(str, Enum):
    TRAINER = "trainer"
    NON_FINITE = "non_finite"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    CRASH = "crash"
    LOST = "lost"
    INTERRUPTED = "interrupted"

    @property
    def infrastructure(self) -> bool:
        """Not the trial's doing: retried, and not counted against the budget."""
        return self in (Failure.CRASH, Failure.LOST, Failure.INTERRUPTED)


@dataclass(frozen=True)
class Job:
    """One trial for a worker: its number, params (resolved, plain data) and seed.
    ``attempt`` counts earlier runs of the same params that crashed or were lost.
    ``study``: set when one coordinator serves several studies (the arms of an experiment,
    ``search/experiment.py``): the worker names it in its report and finish calls, so they
    reach the study the trial belongs to; None for a single study."""

    number: int
    params: dict
    seed: int
    attempt: int = 0
    study: str | None = None


@dataclass(frozen=True)
class Answer:
    """The coordinator's answer to a report: go on, prune, or fail with ``fail`` as reason."""

    prune: bool = False
    fail: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, as its worker saw it."""

    state: TrialState
    metrics: dict = field(default_factory=dict)  # final metrics (floats)
    error: str | None = None
    failure: Failure | None = None
    build: dict | None = None  # the trial's training budget (BuildContext fields), for export
    resources: dict = field(default_factory=dict)  # device; peak_gpu_mb on CUDA

    @classmethod
    def failed(cls, failure: Failure, error: str, **kw: Any) -> "Outcome":
        return cls(TrialState.FAIL, error=error, failure=failure, **kw)


@dataclass(frozen=True)
class Progress:
    """What the driver shows while a study runs."""

    target: int  # the study's n_trials: complete + pruned + counted failures to reach
    counted: int  # finished trials that count, stored before this run included
    complete: int  # this run's
    pruned: int
    failed: int  # counted failures, this run
    retried: int  # infrastructure failures (retried), this run
    running: int
    best: float | None
    stopping: bool

    @property
    def left(self) -> int:
        return max(0, self.target - self.counted)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
