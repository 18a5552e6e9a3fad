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


def test_callers_see_the_mirrors_ids_everywhere(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    other = optuna.create_study(study_name="other", storage=url)  # in the file, not yet in memory
    other.optimize(_objective, n_trials=2, catch=(ValueError,))
    left = other.ask()  # a trial left RUNNING: it can still be written through the mirror
    storage = MirroredStorage(make_storage(url))
    mine = optuna.create_study(study_name="mine", storage=storage)
    mine.ask()
    # (that get_all_studies reports these same ids is checked by test_storage_contract.py)
    assert sorted(s.study_name for s in storage.get_all_studies()) == ["mine", "other"]
    ids = {name: storage.get_study_id_from_name(name) for name in ("mine", "other")}
    assert all(storage.get_study_name_from_id(study_id) == name for name, study_id in ids.items())
    assert len(storage.get_all_trials(ids["other"])) == 3
    optuna.load_study(study_name="other", storage=storage).tell(left.number, state=TrialState.FAIL)
    storage.close()
    assert optuna.load_study(study_name="other", storage=url).trials[-1].state == TrialState.FAIL
    with pytest.raises(RuntimeError, match="closed"):
        mine.ask()
    storage.close()  # a second close does nothing


def test_a_pickled_mirror_keeps_ids_and_writes_to_the_same_file(tmp_path):
    import pickle

    url = f"sqlite:///{tmp_path}/s.db"
    storage = MirroredStorage(make_storage(url))
    study = optuna.create_study(study_name="m", storage=storage)
    study.optimize(_objective, n_trials=3, catch=(ValueError,))
    running = study.ask()
    copy = pickle.loads(pickle.dumps(storage))  # flushes first
    study_id = storage.get_study_id_from_name("m")
    assert copy.get_study_id_from_name("m") == study_id
    assert _snapshot(copy.get_all_trials(study_id)) == _snapshot(study.get_trials())
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, running.number)
    copy.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])  # the copy is now the writer
    copy.close()
    persisted = optuna.load_study(study_name="m", storage=url).trials
    assert persisted[running.number].state == TrialState.COMPLETE and persisted[running.number].value == 1.0


def test_a_store_whose_creation_was_cut_short_is_made_again(tmp_path):
    """A process killed while MLflow or Optuna created its SQLite schema leaves a file the
    next open refuses; holding nothing, it is discarded and made again."""
    import sqlite3
    import subprocess
    import sys

    from optsearch.search.study import discard_unfinished
    from optsearch.search.tracking import MlflowWriter

    url = f"sqlite:///{tmp_path}/mlflow.db"
    # a real store, made by another process (as a killed run's writer did), then as a killed
    # migration leaves it
    subprocess.run([sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({url!r}).search_experiments()"],
                   check=True, capture_output=True)
    with sqlite3.connect(tmp_path / "mlflow.db") as conn:
        conn.execute("drop table alembic_version")
        conn.execute("create table _alembic_tmp_latest_metrics (x integer)")
    writer = MlflowWriter(url, "e")
    writer.open("parent", {"optsearch.study": "e", "optsearch.storage": f"sqlite:///{tmp_path}/o.db"}, None)
    assert writer.parent_id is not None and not writer.errors
    assert not discard_unfinished(url, ("runs",))  # a finished store with a run is never touched
    optuna_url = f"sqlite:///{tmp_path}/o.db"
    with sqlite3.connect(tmp_path / "o.db") as conn:  # Optuna's tables half made, no alembic stamp
        conn.execute("create table studies (study_id integer)")
    storage = make_storage(optuna_url)
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="s", storage=optuna_url).trials) == 2
