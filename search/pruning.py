"""Schedule-aware pruning: any Optuna pruner, consulted only where a trial's schedule makes
its accuracy comparable.

A warm-restart trial's accuracy dips each time its lr jumps back up, and a one-cycle
trial's while its lr is high; median or hyperband pruning at a fixed epoch cuts good SGDR
trials at their restart spikes. ``ScheduleAwarePruner`` asks the pruner it wraps only at
the epochs ``spaces.schedules.judgeable_epochs`` allows for the trial's own schedule (the
end of each SGDR cycle, once one-cycle anneals, never during a warmup); elsewhere the
trial goes on. The trial's schedule and training length come from its ``params`` and
``build`` user attributes (the coordinator records both, ``build`` at the first report).

Config: ``study.pruner: {name: median, schedule_aware: true, ...}``.
"""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from optsearch.spaces.schedules import judgeable_epochs


class ScheduleAwarePruner(BasePruner):
    def __init__(self, wrapped: BasePruner, epochs: int | None = None):
        """``epochs``: the training length to assume when a trial has not recorded its own."""
        self.wrapped = wrapped
        self.epochs = epochs
        self._allowed: dict[int, list[int] | None] = {}

    def allowed(self, trial: FrozenTrial) -> list[int] | None:
        """The epochs at which ``trial`` may be judged; None: not known (judged as usual)."""
        if trial.number not in self._allowed:
            params = trial.user_attrs.get("params") or {}
            build = trial.user_attrs.get("build") or {}
            epochs = build.get("epochs") or self.epochs
            schedule = params.get("schedule")
            if schedule is None or not epochs:
                return None  # not cached: the build may arrive with a later report
            self._allowed[trial.number] = judgeable_epochs(schedule, int(epochs))
        return self._allowed[trial.number]

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        allowed = self.allowed(trial)
        if step is None or (allowed is not None and step not in allowed):
            return False
        return self.wrapped.prune(study, trial)
