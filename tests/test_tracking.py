"""MLflow tells the truth: each trial run checked against the Optuna store it mirrors."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from optsearch.search import config
from optsearch.search.run import run_study
from tests.conftest import digits_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def study_and_runs(ray_cluster, tmp_path_factory):
    """A digits study with pruning (lr down to 1e-5 gets pruned), its Optuna trials and MLflow runs."""
    tmp = tmp_path_factory.mktemp("tracked")
    doc = digits_config(tmp, n_trials=8, pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    doc["trainer"]["epochs"] = 5
    run_study(config.validate(doc, str(tmp / "c.yaml"), tmp))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp}/optsearch.db")
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trials = {int(r.data.tags["optsearch.trial_number"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    return tmp, study, client, exp, parent, trials


def test_a_trial_runs_start_and_end_are_the_trials(study_and_runs):
    _, study, _, _, _, runs = study_and_runs
    for t in study.trials:
        r = runs[t.number]
        optuna_s = (t.datetime_complete - t.datetime_start).total_seconds()
        mlflow_s = (r.info.end_time - r.info.start_time) / 1000
        assert abs(mlflow_s - optuna_s) <= 0.5 + 0.25 * optuna_s, (t.number, mlflow_s, optuna_s)
        assert abs(r.info.start_time / 1000 - t.datetime_start.timestamp()) < 1.0
        assert r.data.metrics["wall_time_s"] == pytest.approx(mlflow_s, abs=0.05)


def test_pruned_trials_are_finished_runs_that_say_so(study_and_runs):
    _, study, _, _, _, runs = study_and_runs
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "the fixture's study prunes"
    for t in pruned:
        r = runs[t.number]
        stopped = max(t.intermediate_values)
        assert r.info.status == "FINISHED" and r.data.tags["optsearch.state"] == "pruned"
        assert r.info.run_name == f"t{t.number} adamw+cosine (pruned @{stopped})"
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert runs[t.number].info.run_name == f"t{t.number} adamw+cosine"


def test_params_are_the_searched_knobs_at_six_significant_digits(study_and_runs):
    _, study, _, _, parent, runs = study_and_runs
    for t in study.trials:
        r = runs[t.number]
        assert set(r.data.params) == {"optimizer.lr"}  # the one searched knob; beta1, eps, ... are fixed
        assert all(len(v) <= 12 for v in r.data.params.values())
        assert float(r.data.params["optimizer.lr"]) == pytest.approx(t.params["adamw.lr"], rel=1e-5)
        resolved = json.loads(r.data.tags["optsearch.params"])  # the full resolved config, exact
        assert resolved == t.user_attrs["params"]
        assert json.loads(r.data.tags["optsearch.optuna_params"]) == t.params  # Optuna's own names
    assert set(parent.data.params) == {"best.optimizer.lr"}


def test_every_final_metric_reaches_mlflow(study_and_runs):
    _, study, _, _, _, runs = study_and_runs
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            r = runs[t.number]
            assert r.data.metrics["test_acc"] == pytest.approx(t.user_attrs["final_test_acc"])
            assert r.data.metrics["value"] == pytest.approx(t.value)


def test_a_pruned_trials_lr_curve_ends_where_it_stopped(study_and_runs):
    _, study, client, _, _, runs = study_and_runs
    for t in study.trials:
        r = runs[t.number]
        spe, epochs = t.user_attrs["build"]["steps_per_epoch"], t.user_attrs["build"]["epochs"]
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "lr_step")]
        ran = max(t.intermediate_values) * spe if t.state == TrialState.PRUNED else epochs * spe
        assert max(steps) == ran - 1, (t.number, t.state, max(steps), ran)


def test_the_study_names_its_metric_and_keeps_bookkeeping_out_of_user_attrs(study_and_runs):
    _, study, _, exp, parent, _ = study_and_runs
    assert study.metric_names == ["val_acc"]
    assert not [k for k in study.user_attrs if k.startswith("optsearch.")]
    note = exp.tags["mlflow.note.content"]
    assert "adamw.lr: 1e-05 .. 1 (log)" in note and parent.data.tags["mlflow.note.content"] == note
    assert note.startswith("optsearch study **t**: adamw with cosine, maximize val_acc, 8 trials.")


def test_the_parent_run_has_the_plots_and_the_exported_code_with_its_header(study_and_runs):
    tmp, study, client, _, parent, _ = study_and_runs
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_schedule.png", "optimization_history.png", "parallel_coordinate.png", "param_importances.png",
            "best_params.yaml", "best_optimizer.py", "config.yaml"} <= artifacts
    code = client.download_artifacts(parent.info.run_id, "best_optimizer.py", str(tmp))
    text = open(code).read()
    best = study.best_trial
    assert f"# trial: {best.number}  state: COMPLETE" in text and "# budget: steps_per_epoch=" in text
    params = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "best_params.yaml", str(tmp))))
    assert params["searched"] == {"optimizer.lr": "adamw.lr"}


def test_configs_lists_whole_descriptions(capsys):
    from optsearch.cli import main
    from optsearch.search.config import bundled_dir, description

    assert main(["configs"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for f in bundled_dir().glob("*.yaml"):
        text = description(f)
        assert text.endswith((".", ")")), f.name  # a header is written as whole sentences
        assert " ".join(text.split()[-6:]) in out, f.name  # and shown to its end



# MLflow caches a store per URI in a process, so each open below is a process of its own.
OPEN_MLFLOW = "import sys; from mlflow import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
OPEN_OURS = ("import sys; from optsearch.search.tracking import open_store; c = open_store(sys.argv[1]); "
             "c.create_run(c.create_experiment('e'))")
BEFORE_MCP = "b7e4c1a90f23"  # the revision before the one that creates mcp_servers


def _py(code: str, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, timeout=120)


def _set_back(path) -> None:
    """Every table exists, the version stamp is a step behind: what a process killed between
    a schema step's DDL and its stamp leaves."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute(f"update alembic_version set version_num = '{BEFORE_MCP}'")


def test_a_half_made_store_that_holds_no_runs_is_made_again(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    assert _py(OPEN_MLFLOW, uri).returncode == 0
    _set_back(tmp_path / "m.db")
    assert _py(OPEN_MLFLOW, uri).returncode != 0  # the control: MLflow cannot open it
    ours = _py(OPEN_OURS, uri)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert _py(OPEN_MLFLOW, uri).returncode == 0  # made again, at the current schema
    assert len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("e").experiment_id])) == 1


def test_a_broken_store_that_holds_runs_is_never_deleted(tmp_path):
    import sqlite3

    uri = f"sqlite:///{tmp_path}/m.db"
    assert _py(OPEN_OURS, uri).returncode == 0  # one run in it
    _set_back(tmp_path / "m.db")
    assert _py(OPEN_OURS, uri).returncode != 0  # refused, not remade
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] == 1
