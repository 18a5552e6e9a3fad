"""The coordinator's write-behind mirror: after flush, the persistent store equals memory."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from optsearch.search.storage import MirroredStorage
from optsearch.search.study import make_storage


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -3, 3)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    trial.set_user_attr("params", {"x": x, "kind": kind})
    for step in range(3):
        trial.report(x * step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    if x > 2.5:
        raise ValueError("fails on purpose")
    return x ** 2


def _snapshot(trials):
    return [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs, t.distributions)
            for t in trials]


def test_mirror_persists_every_write(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    storage = MirroredStorage(make_storage(url))
    study = optuna.create_study(study_name="m", storage=storage, pruner=optuna.pruners.MedianPruner(1, 0),
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    study.set_user_attr("owner", "test")
    study.enqueue_trial({"x": 2.9, "kind": "a"})  # WAITING trials and a failure go through too
    study.optimize(_objective, n_trials=25, catch=(ValueError,))
    storage.flush()
    memory = study.get_trials()
    persisted = optuna.load_study(study_name="m", storage=url)
    assert _snapshot(persisted.get_trials()) == _snapshot(memory)
    assert persisted.user_attrs == {"owner": "test"}
    assert {t.state for t in memory} >= {TrialState.COMPLETE, TrialState.FAIL}
    storage.close()


def test_mirror_resumes_an_existing_study(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    first = optuna.create_study(study_name="m", storage=url)
    first.optimize(_objective, n_trials=5, catch=(ValueError,))
    storage = MirroredStorage(make_storage(url))
    study = optuna.load_study(study_name="m", storage=storage)
    assert _snapshot(study.get_trials()) == _snapshot(first.get_trials())
    study.optimize(_objective, n_trials=3, catch=(ValueError,))
    storage.flush()
    persisted = optuna.load_study(study_name="m", storage=url).get_trials()
    assert [t.number for t in persisted] == list(range(8))
    assert _snapshot(persisted) == _snapshot(study.get_trials())


def test_flush_reports_failed_writes(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    storage = MirroredStorage(make_storage(url))
    study = optuna.create_study(study_name="m", storage=storage)
    study.ask()
    storage._later(lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        storage.flush()
