"""MLflow tells the truth: each trial run checked against the Optuna store it mirrors."""

from __future__ import annotations

import json
import math
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


# --- a new local store is a copy of an empty one MLflow made -----------------------------
def _dump(path) -> tuple[dict, dict]:
    """A store's schema (each statement's lines as a set: alembic's batch migrations write a
    table's constraints in no fixed order) and every table's rows."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        schema = {name: frozenset(line.strip().rstrip(",") for line in (sql or "").splitlines())
                  for name, sql in conn.execute("select name, sql from sqlite_master")}
        rows = {name: conn.execute(f'select * from "{name}"').fetchall() for name in schema
                if conn.execute("select type from sqlite_master where name = ?", (name,)).fetchone()[0] == "table"}
    return schema, rows


def mlflow_version() -> str:
    import mlflow

    return mlflow.__version__


def test_a_store_copied_from_the_empty_one_is_the_store_mlflow_makes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the Default experiment's artifacts go beside the cwd
    assert _py(OPEN_MLFLOW, f"sqlite:///{tmp_path}/theirs.db").returncode == 0
    ours = _py("import sys; from optsearch.search.tracking import open_store; open_store(sys.argv[1])",
               f"sqlite:///{tmp_path}/ours.db")
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert [p.name for p in (tmp_path / "cache").glob("*.db")] == [f"mlflow-{mlflow_version()}-empty.db"]
    (their_schema, their_rows), (our_schema, our_rows) = _dump(tmp_path / "theirs.db"), _dump(tmp_path / "ours.db")
    assert our_schema == their_schema

    def untimed(rows: dict) -> dict:  # experiments' creation_time, last_update_time: when each was made
        return {t: [r[:4] + r[6:] for r in v] if t == "experiments" else v for t, v in rows.items()}

    assert untimed(our_rows) == untimed(their_rows)
    assert [r[:4] for r in our_rows["experiments"]] == [(0, "Default", str(tmp_path / "mlruns" / "0"), "active")]


def test_a_template_mlflow_refuses_is_dropped_and_the_store_made_the_slow_way(tmp_path, monkeypatch):
    import mlflow

    cache = tmp_path / "cache"
    monkeypatch.setenv("OPTSEARCH_CACHE", str(cache))
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    cache.mkdir()
    assert _py(OPEN_MLFLOW, f"sqlite:///{template}").returncode == 0
    _set_back(template)  # a template a step behind the schema (another build of this version)
    uri = f"sqlite:///{tmp_path}/m.db"
    ours = _py(OPEN_OURS, uri)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert not template.exists()
    assert _py(OPEN_MLFLOW, uri).returncode == 0  # at the current schema, MLflow itself says


IMPORTANCES = """
import json, sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
if sys.argv[1] == "without":
    from optsearch.search.tracking import import_importance_without_sklearn
    import_importance_without_sklearn()
study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
study.optimize(lambda t: 10 * t.suggest_float("x", 0, 1) ** 2 + t.suggest_float("y", 0, 1), n_trials=40)
out = {"ped": optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())}
out["sklearn"] = "sklearn" in sys.modules
try:
    optuna.importance.FanovaImportanceEvaluator()
    out["fanova"] = "available"
except ImportError:
    out["fanova"] = "unavailable"
print(json.dumps(out))
"""


def test_the_writer_computes_ped_anova_importances_without_importing_sklearn():
    def run(how: str) -> dict:
        done = subprocess.run([sys.executable, "-c", IMPORTANCES, how], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    plain, without = run("plain"), run("without")
    assert plain["sklearn"] and plain["fanova"] == "available"  # the control: optuna.importance imports it
    assert not without["sklearn"] and without["fanova"] == "unavailable"  # as the docstring says
    assert without["ped"] == plain["ped"] and without["ped"]["x"] > without["ped"]["y"]


def test_a_trial_written_in_one_batch_or_across_batches_ends_with_the_same_run(tmp_path, monkeypatch):
    """The writer creates a run that starts and ends within one batch with its final name and
    tags; a run that exists already gets only its changes. Either way the run is the trial's."""
    from optsearch.search.tracking import MlflowWriter

    monkeypatch.setenv("OPTSEARCH_CACHE", str(tmp_path / "cache"))
    writer = MlflowWriter(f"sqlite:///{tmp_path}/m.db", "e")
    writer.open("parent", {"optsearch.study": "s", "optsearch.storage": "sqlite://", "optsearch.metric": "acc"},
                None, [], "", 1000.0)

    def start(n: int) -> tuple:
        params = {"optimizer": {"name": "adamw", "lr": 0.000123456789, "eps": 1e-8}}
        return (params, {"optimizer.lr": "adamw.lr"}, {"adamw.lr": 0.000123456789},
                {"optsearch.study": "s", "optsearch.trial_number": str(n)}, 1000.0 + n, f"t{n} adamw+cosine")

    def finish(n: int, state: TrialState, name: str, ended: float) -> dict:
        return {"number": n, "state": state, "value": 0.5 if state == TrialState.COMPLETE else None,
                "metrics": {"wall_time_s": ended - 1000.0 - n}, "tags": {"optsearch.state": state.name.lower()},
                "name": name, "params": None, "build": None, "ended": ended, "epochs_run": 2, "last_step": 2}

    writer.apply([{"number": 0, "start": start(0), "points": [(1, {"acc": 0.25}, 1_000_500)],
                   "finish": finish(0, TrialState.COMPLETE, "t0 adamw+cosine", 1003.0)},
                  {"number": 1, "start": start(1), "points": [(1, {"acc": 0.1}, 1_001_500)], "finish": None}])
    running = writer.client.get_run(writer.runs[1])
    assert running.info.status == "RUNNING" and running.info.run_name == "t1 adamw+cosine"
    writer.apply([{"number": 1, "start": None, "points": [(2, {"acc": 0.05}, 1_002_500)],
                   "finish": finish(1, TrialState.PRUNED, "t1 adamw+cosine (pruned @2)", 1004.5)}])
    writer.close()

    runs = {r.data.tags["optsearch.trial_number"]: r
            for r in writer.client.search_runs([writer.experiment_id], "tags.optsearch.trial_number != ''")}
    first, second = runs["0"], runs["1"]
    assert (first.info.run_name, first.info.status, first.data.tags["optsearch.state"]) == \
        ("t0 adamw+cosine", "FINISHED", "complete")
    assert (second.info.run_name, second.info.status, second.data.tags["optsearch.state"]) == \
        ("t1 adamw+cosine (pruned @2)", "FINISHED", "pruned")
    assert second.data.tags["mlflow.runName"] == "t1 adamw+cosine (pruned @2)"
    assert (first.info.start_time, first.info.end_time) == (1_000_000, 1_003_000)
    assert (second.info.start_time, second.info.end_time) == (1_001_000, 1_004_500)
    for r in (first, second):
        assert r.data.params == {"optimizer.lr": "0.000123457"}
        assert r.data.tags["mlflow.parentRunId"] == writer.parent_id
    assert first.data.metrics == {"acc": 0.25, "wall_time_s": 3.0, "value": 0.5}
    assert second.data.metrics == {"acc": 0.05, "wall_time_s": 3.5}
    history = writer.client.get_metric_history(second.info.run_id, "acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.05)]


def test_whole_runs_written_in_one_transaction_read_back_as_the_clients_runs(tmp_path, monkeypatch, caplog):
    """The writer's fast path (``_WholeRuns``: whole trials, many per transaction) against
    MLflow's own client as the oracle: the same trials written both ways, then read back
    through ``MlflowClient``, are the same runs: info, params, tags, latest metrics, every
    metric's history, and what searches and orderings find. The trials include what MLflow
    treats specially: NaN and infinite values, a point logged twice, two points at one step,
    more points and params than one ``log_batch`` request takes (the client splits them),
    and a trial still running between whole ones (its run goes through the client)."""
    from optsearch.search.tracking import MlflowWriter

    monkeypatch.setenv("OPTSEARCH_CACHE", str(tmp_path / "cache"))
    nan, inf = float("nan"), float("inf")

    def groups() -> list[dict]:
        out = []
        for n in range(4):
            lr = 10.0 ** -(n + 2)
            points = [(1, {"acc": 0.1 * n, "loss": 2.0}, 1_000_100 + n), (2, {"acc": 0.2 * n, "loss": nan}, 1_000_200 + n),
                      (2, {"acc": 0.2 * n, "loss": nan}, 1_000_200 + n),  # the same point twice
                      (3, {"acc": 0.25 * n, "loss": inf}, 1_000_300 + n), (3, {"acc": 0.3 * n}, 1_000_400 + n)]
            state = TrialState.PRUNED if n == 3 else TrialState.COMPLETE
            if n == 2:  # a trial that is still running when this batch is sent
                big = {"optimizer": {"name": "sgd", "lr": 0.5}, "extra": {f"p{i:03d}": i / 7 for i in range(120)}}
                out.append({"number": 5, "finish": None, "points": [(1, {"curve": 0.5}, 1_000_001)],
                            "start": (big, {"optimizer.lr": "sgd.lr", **{f"extra.p{i:03d}": f"p{i}" for i in range(120)}},
                                      {"sgd.lr": 0.5}, {"optsearch.study": "s", "optsearch.trial_number": "5"},
                                      1000.0, "t5 sgd")})
            out.append({"number": n, "points": points,
                        "start": ({"optimizer": {"name": "adamw", "lr": lr, "eps": 1e-8}}, {"optimizer.lr": "adamw.lr"},
                                  {"adamw.lr": lr}, {"optsearch.study": "s", "optsearch.trial_number": str(n)},
                                  1000.0 + n, f"t{n} adamw"),
                        "finish": {"number": n, "state": state, "value": None if n == 3 else 0.3 * n,
                                   "metrics": {"wall_time_s": 2.5, "test_acc": -inf if n == 2 else 0.1},
                                   "tags": {"optsearch.state": state.name.lower()},
                                   "name": f"t{n} adamw" + (" (pruned @3)" if n == 3 else ""), "params": None,
                                   "build": None, "ended": 1002.5 + n, "epochs_run": None, "last_step": 3}})
        big = {"optimizer": {"name": "sgd", "lr": 0.25}, "extra": {f"p{i:03d}": i / 7 for i in range(120)}}
        out.append({"number": 4, "points": [(s, {"curve": s / 1000}, 1_000_000 + s) for s in range(1, 1201)],
                    "start": (big, {"optimizer.lr": "sgd.lr", **{f"extra.p{i:03d}": f"p{i}" for i in range(120)}},
                              {"sgd.lr": 0.25}, {"optsearch.study": "s", "optsearch.trial_number": "4"}, 1000.0,
                              "t4 sgd"),
                    "finish": {"number": 4, "state": TrialState.COMPLETE, "value": 1.2, "metrics": {"test_acc": 0.5},
                               "tags": {"optsearch.state": "complete"}, "name": "t4 sgd", "params": None,
                               "build": None, "ended": 1010.0, "epochs_run": None, "last_step": 1200}})
        return out

    def later() -> list[dict]:  # the running trial's end, in the next batch (the writer consumes its lists)
        return [{"number": 5, "start": None, "points": [(2, {"curve": 0.75}, 1_002_001)],
                 "finish": {"number": 5, "state": TrialState.COMPLETE, "value": 0.75, "metrics": {"test_acc": 0.5},
                            "tags": {"optsearch.state": "complete"}, "name": "t5 sgd", "params": None, "build": None,
                            "ended": 1003.0, "epochs_run": None, "last_step": 2}}]

    seen = {}
    for way in ("client", "whole"):
        writer = MlflowWriter(f"sqlite:///{tmp_path}/{way}.db", "e")
        assert writer.whole_runs is not None  # a local SQL store: the fast path is on by default
        if way == "client":
            writer.whole_runs = None
        writer.open("parent", {"optsearch.study": "s", "optsearch.storage": "sqlite://", "optsearch.metric": "acc"},
                    None, [], "", 1000.0)
        writer.apply(groups())
        writer.apply(later())
        assert not writer.errors and "written one by one" not in caplog.text  # no transaction failed
        assert (writer.whole_runs is None) == (way == "client")  # the fast path took every whole trial
        writer.close()
        client, exp = writer.client, writer.experiment_id
        runs = client.search_runs([exp], "tags.optsearch.trial_number != ''", order_by=["tags.optsearch.trial_number"])
        assert len(runs) == 6

        def view(r):
            info = {k: getattr(r.info, k) for k in ("run_name", "status", "start_time", "end_time", "lifecycle_stage",
                                                     "user_id", "experiment_id")}
            info["artifact_uri"] = r.info.artifact_uri.replace(r.info.run_id, "<id>").replace(f"{way}.db", "")
            history = {k: [(m.step, m.timestamp, m.value) for m in client.get_metric_history(r.info.run_id, k)]
                       for k in r.data.metrics}
            tags = {k: (v if k != "mlflow.parentRunId" else "<parent>") for k, v in r.data.tags.items()}
            return info, r.data.params, tags, r.data.metrics, history, list(r.inputs.dataset_inputs)

        found = {q: [r.data.tags["optsearch.trial_number"] for r in client.search_runs([exp], q, order_by=o)]
                 for q, o in (("metrics.acc > 0.25", ["metrics.acc DESC"]), ("params.`optimizer.lr` = '0.001'", None),
                              ("attributes.status = 'FINISHED' and tags.optsearch.state = 'pruned'", None),
                              ("metrics.loss > 1e300", None), ("metrics.test_acc < 0", None))}
        seen[way] = ([view(r) for r in runs], found)
    assert json.dumps(seen["whole"], sort_keys=True, default=str) == json.dumps(seen["client"], sort_keys=True, default=str)
    views, found = seen["whole"]
    # Known answers: acc's latest is its last step's later point, 0.3 n; loss's latest is +inf's stand-in.
    assert found["metrics.acc > 0.25"] == ["3", "2", "1"] and found["params.`optimizer.lr` = '0.001'"] == ["1"]
    assert sorted(found["metrics.loss > 1e300"]) == ["0", "1", "2", "3"] and found["metrics.test_acc < 0"] == ["2"]
    assert found["attributes.status = 'FINISHED' and tags.optsearch.state = 'pruned'"] == ["3"]
    assert views[2][3]["test_acc"] == -1.7976931348623157e308  # MLflow's stand-in for -inf, both ways
    assert len(views[4][1]) == 121 and views[4][1]["extra.p007"] == "1" and len(views[4][4]["curve"]) == 1200
    assert views[4][3]["curve"] == 1.2 and views[5][3]["curve"] == 0.75 and len(views[5][1]) == 121
    assert sorted(views[1][4]["acc"]) == [(1, 1_000_101, 0.1), (2, 1_000_201, 0.2), (3, 1_000_301, 0.25),
                                          (3, 1_000_401, 0.3)]
    loss = sorted(views[0][4]["loss"])
    assert [(s, t) for s, t, _ in loss] == [(1, 1_000_100), (2, 1_000_200), (3, 1_000_300)]  # the twice-logged point once
    assert loss[0][2] == 2.0 and math.isnan(loss[1][2]) and loss[2][2] == 1.7976931348623157e308


def test_a_metric_name_mlflow_refuses_is_left_out_once_and_blocks_no_later_write(tmp_path, monkeypatch):
    """A trainer may report a metric MLflow refuses to name (``acc@1``). Retried, its write
    failed every time and every later write of the study queued behind it; now the name is
    left out, said once in the errors, and the rest of every run is written, by either path
    (a whole trial in one transaction, a trial across batches through the client)."""
    from optsearch.search.tracking import MlflowWriter

    monkeypatch.setenv("OPTSEARCH_CACHE", str(tmp_path / "cache"))
    writer = MlflowWriter(f"sqlite:///{tmp_path}/m.db", "e")
    writer.open("parent", {"optsearch.study": "s", "optsearch.storage": "sqlite://", "optsearch.metric": "acc"},
                None, [], "", 1000.0)

    def start(n: int) -> tuple:
        return ({"optimizer": {"name": "adamw", "lr": 0.01}}, {"optimizer.lr": "adamw.lr"}, {"adamw.lr": 0.01},
                {"optsearch.study": "s", "optsearch.trial_number": str(n)}, 1000.0 + n, f"t{n}")

    def finish(n: int) -> dict:
        return {"number": n, "state": TrialState.COMPLETE, "value": 0.5, "metrics": {"acc": 0.5, "top@5": 0.9},
                "tags": {"optsearch.state": "complete"}, "name": f"t{n}", "params": None, "build": None,
                "ended": 1005.0 + n, "epochs_run": None, "last_step": 1}

    writer.apply([{"number": 0, "start": start(0), "points": [(1, {"acc": 0.5, "acc@1": 0.4}, 1_000_500)],
                   "finish": finish(0)},
                  {"number": 1, "start": start(1), "points": [(1, {"acc": 0.25, "acc@1": 0.2}, 1_001_500)],
                   "finish": None}])
    writer.apply([{"number": 1, "start": None, "points": [(2, {"acc": 0.5, "acc@1": 0.3}, 1_002_500)],
                   "finish": finish(1)},
                  {"number": 2, "start": start(2), "points": [(1, {"acc": 0.75}, 1_002_600)], "finish": finish(2)}])
    result = writer.close()

    assert result["unwritten"] == 0
    assert len(result["errors"]) == 2  # one per refused name, however often it came
    assert "'acc@1'" in result["errors"][0] and "'top@5'" in result["errors"][1]
    runs = {r.data.tags["optsearch.trial_number"]: r
            for r in writer.client.search_runs([writer.experiment_id], "tags.optsearch.trial_number != ''")}
    assert sorted(runs) == ["0", "1", "2"]
    for n, r in runs.items():
        assert r.info.status == "FINISHED" and set(r.data.metrics) == {"acc", "value"}, (n, r.data.metrics)
    history = writer.client.get_metric_history(runs["1"].info.run_id, "acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.25), (1, 0.5), (2, 0.5)]
