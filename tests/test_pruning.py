"""Schedule-aware pruning: the wrapped pruner is consulted only where the schedule allows."""

from __future__ import annotations

import time

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


def test_sample_ahead_keeps_one_point_queued_so_none_is_drawn_blind(tmp_path):
    """Optuna's samplers ignore WAITING trials: two points queued at once would each be drawn
    without knowing the other. However many trials are handed out, one waits, and it was
    drawn while every handed-out trial was RUNNING (constant liar saw them)."""
    from optuna.trial import TrialState

    from optsearch.search import config
    from optsearch.search import study as studies
    from optsearch.search.coordinator import Coordinator
    from tests.conftest import digits_config

    doc = digits_config(tmp_path, n_trials=20, sampler={"name": "tpe", "seed": 0, "n_startup_trials": 2})
    doc["study"]["sample_ahead"] = True
    doc["tracking"] = {"enabled": False}
    cfg = config.validate(doc, str(tmp_path / "c.yaml"), tmp_path)
    prepared = studies.prepare(cfg)
    coord = Coordinator(cfg, prepared.owner)
    try:
        jobs = [coord.ask(slot) for slot in range(4)]  # four workers, none finished
        assert len({j.number for j in jobs}) == 4
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not coord.sampler._waiting():
            time.sleep(0.05)
        time.sleep(1.0)  # time for a second point, were there to be one
        trials = coord.study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        assert len(waiting) == 1 and waiting[0].params  # sampled ahead: its params are stored
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        assert running == {j.number for j in jobs}
    finally:
        coord.close()
        studies.release_claim(cfg.study, prepared.owner)


def _auto_coordinator(tmp_path, name):
    from optsearch.search import config
    from optsearch.search import study as studies
    from optsearch.search.coordinator import Coordinator
    from tests.conftest import digits_config

    doc = digits_config(tmp_path, n_trials=12, sampler={"name": "random", "seed": 0})
    doc["study"]["name"] = name
    doc["tracking"] = {"enabled": False}
    cfg = config.validate(doc, str(tmp_path / f"{name}.yaml"), tmp_path)
    assert cfg.study.sample_ahead == "auto"  # the default
    prepared = studies.prepare(cfg)
    return Coordinator(cfg, prepared.owner), cfg, prepared


@pytest.mark.parametrize("trial_s, engages", [(0.3, False), (0.0, True)])
def test_sample_ahead_auto_starts_only_when_sampling_costs_a_worker_time(tmp_path, trial_s, engages):
    """auto: with trials of 0.3 s the random sampler's ~1 ms asks are well under 2% of a
    trial, so every point is sampled at its ask (nothing WAITING, as plain Optuna); with
    trials that end at once, sampling is most of a worker's time and it samples ahead."""
    from optuna.trial import TrialState

    from optsearch.search import study as studies
    from optsearch.search.protocol import Outcome

    coord, cfg, prepared = _auto_coordinator(tmp_path, f"auto{int(engages)}")
    seen_waiting = []
    try:
        for _ in range(8):
            job = coord.ask(0)
            time.sleep(trial_s)
            coord.finish(job.number, Outcome(TrialState.COMPLETE, {"val_acc": 0.5}))
            time.sleep(0.1)  # the sample-ahead thread's moment, were it on
            seen_waiting.append(len(coord.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
        assert coord.sampler.engaged is engages
        assert (max(seen_waiting) == 1) is engages and max(seen_waiting) <= 1
    finally:
        coord.close()
        studies.release_claim(cfg.study, prepared.owner)


def test_sample_ahead_never_queues_a_trial_past_the_budget(tmp_path):
    """The sample-ahead thread checks the budget (counted + running + waiting) while the
    coordinator hands out and records trials. A trial just popped from the queue but not yet
    running, or one removed from running but not yet counted, once made the budget look one
    short, and a trial beyond it was queued (a study of 6 held 7). Frequent thread switches
    make such a window show; the budget must hold exactly."""
    import sys

    from optuna.trial import TrialState

    from optsearch.search import config
    from optsearch.search import study as studies
    from optsearch.search.coordinator import Coordinator
    from optsearch.search.protocol import Outcome
    from tests.conftest import digits_config

    n = 60
    doc = digits_config(tmp_path, n_trials=n, sampler={"name": "random", "seed": 0})
    doc["study"]["sample_ahead"] = True
    doc["tracking"] = {"enabled": False}
    cfg = config.validate(doc, str(tmp_path / "c.yaml"), tmp_path)
    prepared = studies.prepare(cfg)
    coord = Coordinator(cfg, prepared.owner)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        held = [coord.ask(0), coord.ask(1)]  # two workers
        while held:
            job = held.pop(0)
            coord.finish(job.number, Outcome(TrialState.COMPLETE, {"val_acc": 0.5}))
            nxt = coord.ask(job.number % 2)
            if nxt is not None:
                held.append(nxt)
    finally:
        sys.setswitchinterval(interval)
        coord.close()
        studies.release_claim(cfg.study, prepared.owner)
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * n
