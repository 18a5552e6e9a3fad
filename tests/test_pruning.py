"""Schedule-aware pruning: the wrapped pruner is consulted only where the schedule allows."""

from __future__ import annotations

import optuna
import pytest
from optuna.pruners import BasePruner

from optsearch.errors import ConfigError
from optsearch.search import samplers
from optsearch.search.pruning import ScheduleAwarePruner

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Recorder(BasePruner):
    """A pruner that never prunes and remembers the steps it was asked at."""

    def __init__(self):
        self.asked: list[int] = []

    def prune(self, study, trial) -> bool:
        self.asked.append(trial.last_step)
        return False


def consulted(schedule: dict, epochs: int, with_build: bool = True) -> list[int]:
    recorder = Recorder()
    study = optuna.create_study(pruner=ScheduleAwarePruner(recorder, epochs=None if with_build else epochs))
    trial = study.ask()
    trial.set_user_attr("params", {"optimizer": {"name": "sgd"}, "schedule": schedule})
    if with_build:
        trial.set_user_attr("build", {"steps_per_epoch": 7, "epochs": epochs})
    for epoch in range(1, epochs + 1):  # step by step, as a trainer reports
        trial.report(0.5, epoch)
        trial.should_prune()
    return recorder.asked


def test_sgdr_is_judged_only_at_the_end_of_each_cycle():
    # T_0 = 1, T_mult = 2 over 10 epochs: cycles end at 1, 1 + 2 = 3, 3 + 4 = 7; the run at 10
    assert consulted({"name": "sgdr", "T_0": 1.0, "T_mult": 2}, 10) == [1, 3, 7, 10]
    # T_0 = 2.5, T_mult = 1: cycles end at 2.5, 5, 7.5 -> the reports at or before: 2, 5, 7
    assert consulted({"name": "sgdr", "T_0": 2.5, "T_mult": 1}, 10) == [2, 5, 7, 10]


def test_onecycle_is_judged_once_it_anneals_and_a_warmup_never():
    # pct_start 0.3 of 10 epochs: the lr peaks at epoch 3 and anneals after
    assert consulted({"name": "onecycle", "pct_start": 0.3}, 10) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert consulted({"name": "cosine", "warmup_epochs": 2}, 6) == [3, 4, 5, 6]
    assert consulted({"name": "cosine", "warmup_epochs": 0}, 4) == [1, 2, 3, 4]
    assert consulted({"name": "sgdr", "T_0": 1.0, "T_mult": 2}, 10, with_build=False) == [1, 3, 7, 10]


def test_the_wrapped_pruner_decides_at_the_allowed_steps():
    study = optuna.create_study(direction="maximize", pruner=ScheduleAwarePruner(
        optuna.pruners.ThresholdPruner(lower=0.5), epochs=10))
    trial = study.ask()
    trial.set_user_attr("params", {"schedule": {"name": "sgdr", "T_0": 1.0, "T_mult": 2}})
    answers = []
    for epoch in range(1, 11):
        trial.report(0.1, epoch)  # below the threshold every epoch
        answers.append(trial.should_prune())
    assert [e for e, a in zip(range(1, 11), answers) if a] == [1, 3, 7, 10]


def test_config_turns_it_on_for_any_pruner():
    name, options = samplers.parse("study.pruner", {"name": "median", "schedule_aware": True}, "pruner", "median")
    pruner = samplers.make("pruner", name, options, epochs=10)
    assert isinstance(pruner, ScheduleAwarePruner) and isinstance(pruner.wrapped, optuna.pruners.MedianPruner)
    plain = samplers.make("pruner", *samplers.parse("p", {"name": "hyperband"}, "pruner", "median"))
    assert isinstance(plain, optuna.pruners.HyperbandPruner)
    with pytest.raises(ConfigError, match="schedule_aware"):
        samplers.parse("study.pruner", {"name": "median", "schedule_aware": "yes"}, "pruner", "median")


def test_sample_ahead_spends_exactly_the_budget_and_samples_each_trial_once(ray_cluster, tmp_path):
    from optuna.trial import TrialState

    from optsearch.search import config
    from optsearch.search.run import run_study
    from tests.conftest import digits_config

    doc = digits_config(tmp_path, n_trials=8, sampler={"name": "tpe", "seed": 0, "n_startup_trials": 3})
    doc["trainer"]["epochs"] = 2
    doc["study"]["sample_ahead"] = True
    run_study(config.validate(doc, str(tmp_path / "c.yaml"), tmp_path))
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db").trials
    assert len(trials) == 8 and sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 8
    assert len({t.number for t in trials}) == 8 and not [t for t in trials if t.state == TrialState.WAITING]
    for t in trials:  # what ran is what was sampled, once: the stored param and the resolved one agree
        assert t.params["adamw.lr"] == t.user_attrs["params"]["optimizer"]["lr"]
    assert len({t.params["adamw.lr"] for t in trials}) == 8
