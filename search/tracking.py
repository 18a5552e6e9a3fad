"""MLflow tracking: the only module that imports mlflow.

``MlflowWriter`` performs the writes. The coordinator never waits on it: inside Ray it runs
as its own actor process (calls are fire-and-forget and arrive in order), so neither
MLflow's start-up nor its SQLite commits take the coordinator's time or its GIL; outside
Ray a thread plays that part (``ThreadedWriter``). Either way ``close`` waits for the
writes to land.

What a study waits for at its end is kept small (``bench/overhead.py``): a new local store
is a copy of an empty one MLflow made (``empty_store``), not two seconds of migrations; on
a local SQLite store the trials that start and end between two batches are written in one
transaction of MLflow's own table models (``_WholeRuns``), a tenth of the CPU of the client's
three calls per run; the parent run's plots are drawn from the trials the coordinator sends,
and what they import is imported while the study runs.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from optsearch.cache import cache_dir
from optsearch.search import urls

log = logging.getLogger(__name__)

# The one mapping from a trial's Optuna state to its MLflow run status. Pruning is a normal
# outcome (the run says so in its optsearch.state tag), not a failure.
STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}
RETRY_EVERY_S = 5.0  # while MLflow fails, the backlog is retried at most this often


def open_store(uri: str):
    """An ``MlflowClient`` on ``uri``, its store made and usable: a local store that a killed
    process left half made, holding no runs, is made again (``study.discard_unfinished``).
    A new local store starts as a copy of ``empty_store()``, when one can be had."""
    from mlflow import MlflowClient

    from optsearch.search.study import creation_lock, discard_unfinished, open_remaking_empty

    opened: list[Path | None] = []  # the template each open started from
    path = urls.sqlite_path(uri)

    def open_client() -> MlflowClient:
        template = None
        if opened:  # again, after the store was deleted: MLflow keeps one engine per URI, on the old file
            _drop_engine(uri)
            if opened[-1] is not None:  # a copy of the template failed: made the slow way from now on
                opened[-1].unlink(missing_ok=True)
        elif path is not None and not path.exists():
            template = empty_store()
            if template is not None:
                _copy_file(template, path)
        opened.append(template)
        client = MlflowClient(tracking_uri=uri)
        if urls.is_sqlite(uri):
            client.search_experiments(max_results=1)  # a fresh local store creates its schema here
        return client

    with creation_lock(uri):
        discard_unfinished(uri, ("runs",))
        return open_remaking_empty(uri, ("runs",), open_client)


def _drop_engine(uri: str) -> None:
    """Forget MLflow's cached engine for ``uri`` (MLflow keeps one per URI, for the process)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()


def _copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` whole or not at all (a temporary file, then a rename)."""
    import os
    import shutil

    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(source, part)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def empty_store() -> Path | None:
    """An empty local MLflow store made by this MLflow version: its tables created and
    migrated by MLflow itself, without the Default experiment (MLflow makes that at the first
    open, with the artifact location and time of the store it is in). Made once per MLflow
    version in ``cache_dir()``; a new local store copied from it opens in a fraction of the
    two seconds MLflow's migrations take. None when the cache cannot be written."""
    import os
    import sqlite3

    import mlflow

    template = cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"
    if template.exists():
        return template
    part = template.with_name(f".{template.name}.{os.getpid()}.part")
    url = f"sqlite:///{part}"
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        part.unlink(missing_ok=True)
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=url).search_experiments(max_results=1)
        _drop_engine(url)
        with contextlib.closing(sqlite3.connect(part)) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")  # one file, the log folded in
            tables = {name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")}
            with conn:
                for table in ("experiment_tags", "experiments"):
                    if table in tables:
                        conn.execute(f"delete from {table} where experiment_id = 0")
            conn.execute("VACUUM")
        os.replace(part, template)
    except Exception as err:  # noqa: BLE001 - the store is then made the slow way
        log.warning("no empty MLflow store in %s: %s", template.parent, err)
        return None
    finally:
        for leftover in (part, Path(f"{part}-wal"), Path(f"{part}-shm")):
            leftover.unlink(missing_ok=True)
    return template


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (MLflow 3 would otherwise use ./mlruns of the cwd)."""
    db = urls.sqlite_path(uri)
    return None if db is None else (db.absolute().parent / "mlartifacts").as_uri()


def ui_link(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    # MLflow 3.17 opens experiments in its GenAI view; this shows the training runs table.
    return f"{host}/#/experiments/{experiment_id}?workflowType=machine_learning"


def _ms(t: float | None = None) -> int:
    return int((time.time() if t is None else t) * 1000)


def param_text(value: Any) -> str:
    """A param as MLflow shows it: floats at 6 significant digits (``8.70925e-05``, not
    ``8.709250120548572e-05``, which the runs table cuts to ``8.70925012…``); the exact
    values stay in Optuna and in the trial's ``optsearch.params`` tag."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _params(start: tuple) -> list:
    """A trial's params in MLflow (``start``: its group's start): the searched knobs, by
    resolved path, at 6 significant digits."""
    from mlflow.entities import Param

    flat = flatten(start[0])
    return [Param(k, param_text(flat[k])) for k in start[1] if k in flat]


def import_importance_without_sklearn() -> None:
    """Import ``optuna.importance`` with scikit-learn kept out, unless it is in already.

    The package imports scikit-learn's ensemble module for its fANOVA and MDI evaluators
    (over a second of CPU, most of a small study's summary) though PED-ANOVA, the one the
    parent run's importance plot uses, needs only numpy. Call it only in a process of its
    own: there fANOVA and MDI then say scikit-learn failed to import."""
    import sys

    if "optuna.importance" in sys.modules or "sklearn" in sys.modules:
        return
    hidden = ("sklearn", "sklearn.ensemble")
    for name in hidden:
        sys.modules[name] = None  # an import of it fails at once, and optuna's try_import notes that
    try:
        import optuna.importance  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


def _import_plotting() -> None:
    """Import what the parent run's plots need while the study runs, not after it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
        import optuna.visualization.matplotlib  # noqa: F401

        import_importance_without_sklearn()
    except Exception:  # noqa: BLE001, S110 - the summary imports them again and says what fails
        pass


class MlflowWriter:
    """MLflow writes for one invocation of a study (one parent run).

    Nothing is dropped when MLflow fails: a write that fails goes to a backlog, and every
    later write queues behind it (order matters: a trial's metrics need its run). The
    backlog is retried at most every ``RETRY_EVERY_S`` and once more at ``close``, which
    reports how many writes could not be made.
    """

    def __init__(self, uri: str, experiment: str, owner: Any = None):
        """``owner``: the driver's claim (``study.Owner``); the writer ends with the driver."""
        import os

        self.own_process = owner is not None
        if owner is not None:  # its own actor process
            from optsearch.search.study import exit_with

            exit_with(owner)

        for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
            os.environ.setdefault(var, value)  # a tracking server that is down costs seconds, not minutes
        import mlflow  # noqa: F401

        from optsearch.search.study import fast_sqlite

        for name in ("mlflow", "alembic"):  # mlflow sets its own INFO level on import
            logging.getLogger(name).setLevel(logging.WARNING)
        if urls.is_sqlite(uri):
            fast_sqlite()  # this process is the tracking store's only writer
        self.uri = uri
        self.experiment = experiment
        self.client = open_store(uri)
        if owner is not None:
            # Ready. Its start ran at full priority: a writer still starting when the study
            # ends leaves every run to be written after it. From now on it is background work
            # (trials and the coordinator come first on a busy CPU).
            os.nice(10)
            threading.Thread(target=_import_plotting, daemon=True, name="optsearch-plot-imports").start()
        self.errors: list[str] = []
        self.backlog: list[tuple[str, tuple]] = []
        self._retried = 0.0
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.runs: dict[int, str] = {}
        self.run_tags: dict[int, dict] = {}  # the tags each open run was created with
        self.recovered: list[str] = []  # runs a crashed invocation left RUNNING, closed at open
        self.backfilled = 0  # finished trials that had no run, logged at open
        self.study = self.storage = None  # set by open
        self.metric = "value"
        self.whole_runs = _WholeRuns.of(self.client) if urls.is_sqlite(uri) else None  # None: all through the client
        self._whole_failures = 0  # its transactions that failed in a row
        self._metric_names: dict[str, bool] = {}  # metric name -> whether MLflow takes it

    # --- writes that survive MLflow's failures --------------------------------------------
    def _do(self, name: str, *args: Any) -> None:
        """Run write ``name`` now, or queue it behind the backlog."""
        if self.backlog and not self._drain():
            self.backlog.append((name, args))
            return
        try:
            getattr(self, name)(*args)
        except Exception as err:  # noqa: BLE001 - tracking must never take a study down
            self._failed(name, err)
            self.backlog.append((name, args))

    def _drain(self, force: bool = False) -> bool:
        """Retry the backlog in order; True when it is empty."""
        if not force and time.monotonic() - self._retried < RETRY_EVERY_S:
            return False
        self._retried = time.monotonic()
        while self.backlog:
            name, args = self.backlog[0]
            try:
                getattr(self, name)(*args)
            except Exception as err:  # noqa: BLE001
                self._failed(name, err)
                return False
            self.backlog.pop(0)
        return True

    def _failed(self, name: str, err: Exception) -> None:
        message = f"mlflow {name.strip('_')} failed: {type(err).__name__}: {str(err).strip()[:300]}"
        log.warning(message)
        if len(self.errors) < 20:
            self.errors.append(message)

    def _batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        metrics = list(metrics)
        for i in range(0, max(1, len(metrics)), 1000):  # MLflow's per-request limit
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000], params=params if i == 0 else (),
                                  tags=tags if i == 0 else ())

    # --- the protocol the coordinator calls ---------------------------------------------
    def open(self, run_name: str, tags: dict[str, str], config_text: str | None, before: list[int] = (),
             description: str = "", started: float | None = None) -> None:
        """Open the parent run; ``before``: the numbers of the trials that had finished
        before this run began (those without a run are backfilled; trials queued then, such
        as seed re-runs and retries, are this run's to write); ``description``: what the study
        searches (shown on the experiment and the parent run)."""
        self._do("_open", run_name, tags, config_text, before, description, started)

    def apply(self, groups: list) -> None:
        """A batch of trial events from the ``Tracker``, one group per trial, in order:
        ``{"number", "start": (params, searched, sampled, tags, started, name) or None,
        "points": [(step, metrics, timestamp_ms)], "finish": record or None}`` (a record:
        state, value, metrics, tags, name, params, build, ended, epochs_run). The short trials
        that start and end within one batch are written together, in one transaction
        (``_WholeRuns``, on a SQLite store; elsewhere three client calls each: create,
        one log_batch, end)."""
        self._do("_apply", groups)

    def study_summary(self, number: int, value: float, params: dict, build: dict | None, searched: dict,
                      trials: list, direction: Any) -> None:
        """The parent run's summary: the best trial's params, export and schedule, and the
        study's plots drawn from ``trials`` (the study's trials, as the coordinator holds
        them: the writer need not open the study's storage)."""
        self._do("_summary", number, value, params, build, searched, trials, direction)

    def close(self, status: str = "FINISHED") -> dict:
        self._do("_close", status)
        self._drain(force=True)
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_id, "errors": self.errors,
                "unwritten": len(self.backlog), "recovered": self.recovered, "backfilled": self.backfilled}

    # --- the writes -------------------------------------------------------------------------
    def _open(self, run_name: str, tags: dict[str, str], config_text: str | None, before: list[int],
              description: str, started: float | None) -> None:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(self.experiment,
                                                               artifact_location=artifact_location(self.uri))
        else:
            self.experiment_id = exp.experiment_id
        self.study, self.storage, self.metric = (tags["optsearch.study"], tags["optsearch.storage"],
                                                 tags.get("optsearch.metric", "value"))
        if description:  # the experiments list and the run page show it
            self.client.set_experiment_tag(self.experiment_id, "mlflow.note.content", description)
            tags = {**tags, "mlflow.note.content": description}
        self._recover(tags["optsearch.study"])
        self.parent_id = self.client.create_run(self.experiment_id, start_time=_ms(started), tags=tags,
                                                run_name=run_name).info.run_id
        if config_text is not None:
            self.client.log_text(self.parent_id, config_text, "config.yaml")
        if before:
            self._backfill(tags["optsearch.storage"], tags["optsearch.study"], tags.get("optsearch.metric", "value"),
                           before)

    def _backfill(self, storage: str, study: str, metric: str, before: list[int]) -> None:
        """Log the finished trials of the study that have no run here (a run that died before
        its writer wrote them, tracking turned off then on): MLflow holds what Optuna holds."""
        import optuna
        from mlflow.entities import Metric, Param, RunTag

        present: set[str] = set()
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], "", max_results=5000, page_token=token)
            present |= {r.data.tags.get("optsearch.trial_number") for r in page
                        if r.data.tags.get("optsearch.study") == study}  # arms share an experiment
            token = page.token
            if not token:
                break
        stored = optuna.load_study(study_name=study, storage=storage)
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        before = set(before)
        for t in stored.get_trials(deepcopy=False, states=finished):
            if t.number not in before or str(t.number) in present:
                continue
            state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(
                t.state, "retried" if t.user_attrs.get("retried") else "failed")
            tags = {"mlflow.parentRunId": self.parent_id, "optsearch.study": study, "optsearch.state": state,
                    "optsearch.trial_number": str(t.number), "optsearch.backfilled": "true"}
            if t.user_attrs.get("error"):
                tags["optsearch.error"] = str(t.user_attrs["error"])[:5000]
            start = _ms(t.datetime_start.timestamp()) if t.datetime_start else None
            end = _ms(t.datetime_complete.timestamp()) if t.datetime_complete else start
            run_id = self.client.create_run(self.experiment_id, start_time=start, tags=tags,
                                            run_name=f"trial-{t.number}").info.run_id
            metrics = [Metric(metric, float(v), end or 0, int(step)) for step, v in sorted(t.intermediate_values.items())]
            if t.value is not None:
                metrics.append(Metric("value", float(t.value), end or 0, 0))
            params = [Param(k, str(v)) for k, v in flatten(t.user_attrs.get("params") or t.params).items()]
            self._batch(run_id, metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run_id, STATUS[t.state], end_time=end)
            self.backfilled += 1

    def _recover(self, study: str) -> None:
        """Close the runs a crashed invocation of this study left RUNNING (its claim has
        lapsed, so none is live): trials FAILED, parents KILLED."""
        stale = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
        parents = {r.info.run_id for r in stale
                   if r.data.tags.get("optsearch.study") == study and "mlflow.parentRunId" not in r.data.tags}
        for r in stale:
            parent = r.data.tags.get("mlflow.parentRunId")
            if r.info.run_id in parents:
                self.client.set_terminated(r.info.run_id, "KILLED")
            elif parent in parents or (parent and r.data.tags.get("optsearch.study") == study):
                self.client.set_tag(r.info.run_id, "optsearch.state", "retried")
                self.client.set_tag(r.info.run_id, "optsearch.error", "interrupted: the run that ran it died")
                self.client.set_terminated(r.info.run_id, "FAILED")
            else:
                continue
            self.recovered.append(r.info.run_id)

    def _apply(self, groups: list) -> None:
        """Write the groups from the front; each is removed once done, and its steps are
        marked as they succeed, so a retry (the backlog holds this same list) writes only
        what is left."""
        while groups:
            whole = self._whole(groups)
            if whole:
                del groups[:whole]
                continue
            self._group(groups[0])
            groups.pop(0)

    def _whole(self, groups: list) -> int:
        """Write the leading groups that are whole trials (started and finished within this
        batch: most short trials) in one transaction (``_WholeRuns``); how many were written.
        A group that cannot be put together ends the run of whole groups (the client path
        then writes it, or says why not). When the transaction fails nothing of it is kept
        and the client writes these groups; after three failures in a row, every run."""
        if self.whole_runs is None or self.parent_id is None:
            return 0
        runs = []
        for g in groups:
            if g["start"] is None or g["finish"] is None or g.get("logged") or g["number"] in self.runs:
                break
            try:
                metrics, final_tags = self._final_of(g)
                name = final_tags.get("mlflow.runName", g["start"][5])
                runs.append({"name": name, "started": _ms(g["start"][4]), "ended": _ms(g["finish"]["ended"]),
                             "tags": {**self._opening_tags(g["start"]),
                                      **{k: str(v) for k, v in final_tags.items() if k != "mlflow.runName"}},
                             "status": STATUS[g["finish"]["state"]], "params": _params(g["start"]),
                             "metrics": self._metrics_of(g, metrics)})
            except Exception:  # noqa: BLE001 - the client path writes it, or reports why it cannot
                break
        if not runs:
            return 0
        try:
            self.whole_runs.write(self.experiment_id, runs)
        except Exception as err:  # noqa: BLE001 - the client writes them instead
            self._whole_failures += 1
            log.warning("MLflow: %d run(s) written one by one after %s: %s", len(runs), type(err).__name__, err)
            if self._whole_failures >= 3:
                self.whole_runs = None
            return 0
        self._whole_failures = 0
        return len(runs)

    def _takes(self, name: str) -> bool:
        """Whether MLflow takes ``name`` as a metric name. A name it refuses (``acc@1``) is
        left out, said once in the errors: retried, its write would fail every time, and every
        later write would wait behind it."""
        if name not in self._metric_names:
            from mlflow.utils.validation import _validate_metric_name

            try:
                _validate_metric_name(name)
                self._metric_names[name] = True
            except Exception as err:  # noqa: BLE001 - MLflow's own words say why
                self._metric_names[name] = False
                self._failed(f"metric {name!r} (not logged)", err)
        return self._metric_names[name]

    def _metrics_of(self, g: dict, extra: list) -> list:
        """The metrics a group logs: its reported points, then ``extra`` (its final ones),
        without the names MLflow refuses."""
        from mlflow.entities import Metric

        points = [Metric(k, float(v), ts, step) for step, values, ts in g["points"] for k, v in values.items()]
        return [m for m in points + list(extra) if self._takes(m.key)]

    def _opening_tags(self, start: tuple) -> dict:
        """The tags a trial's run is created with (``start``: the group's start)."""
        import json

        params, _, sampled, tags, _, _ = start
        return {"mlflow.parentRunId": self.parent_id, **tags,
                "optsearch.params": json.dumps(params, sort_keys=True, default=str),
                "optsearch.optuna_params": json.dumps(sampled, sort_keys=True, default=str)}

    def _final_of(self, g: dict) -> tuple[list, dict]:
        """``_final`` of the group's finish, worked out once (a retry reuses it)."""
        if "final" not in g:
            g["final"] = self._final(g["finish"])
        metrics, tags = g["final"]
        return list(metrics), dict(tags)

    def _group(self, g: dict) -> None:
        """One trial's writes through the client. A trial that starts and ends within one
        batch (when ``_whole`` did not write it) costs three: its run is created with its
        final name and tags, one ``log_batch`` (metrics and params), and its end; a trial
        whose run exists already sends only the tags that changed, and its final name."""
        from mlflow.entities import RunTag

        number = g["number"]
        if self.parent_id is None:
            return
        final_tags: dict = {}
        extra: list = []
        if g["finish"] is not None and not g.get("logged"):
            extra, final_tags = self._final_of(g)
        if number not in self.runs:
            if g["start"] is None:
                return  # a trial this invocation never opened (its start was lost with a crash)
            started, name = g["start"][4], g["start"][5]
            tags = self._opening_tags(g["start"])
            if final_tags:  # it ended too: created as it ended (name and tags final)
                name = final_tags.pop("mlflow.runName", name)
                tags.update({k: str(v) for k, v in final_tags.items()})
                final_tags = {}
            self.runs[number] = self.client.create_run(self.experiment_id, start_time=_ms(started), tags=tags,
                                                       run_name=name).info.run_id
            self.run_tags[number] = {**tags, "mlflow.runName": name}
        elif final_tags:  # only what changed since the run was created
            known = self.run_tags.get(number, {})
            final_tags = {k: v for k, v in final_tags.items() if known.get(k) != str(v)}
        run_id = self.runs[number]
        if not g.get("logged"):
            metrics = self._metrics_of(g, extra)
            params = [] if g["start"] is None else _params(g["start"])
            if metrics or params or final_tags:
                self._batch(run_id, metrics, params=params,
                            tags=[RunTag(k, str(v)) for k, v in final_tags.items()])
            g["logged"] = True
        if g["finish"] is not None:
            r = g["finish"]
            self.client.set_terminated(run_id, STATUS[r["state"]], end_time=_ms(r["ended"]))
            del self.runs[number]
            self.run_tags.pop(number, None)

    def _final(self, r: dict) -> tuple[list, dict]:
        """A finished trial's final metrics (every one the trainer returned, the value, the lr
        and momentum of every step it ran) and tags (its state, its run name)."""
        from mlflow.entities import Metric

        now = _ms(r["ended"])
        last = r.get("last_step") or 0
        metrics = [Metric(k, float(v), now, last) for k, v in r["metrics"].items()]
        if r["value"] is not None:
            metrics.append(Metric("value", float(r["value"]), now, 0))
        build, params = r["build"], r["params"]
        if params and build is not None:
            from optsearch.search.report import trajectory

            until = None if r["epochs_run"] is None else r["epochs_run"] * build["steps_per_epoch"]
            try:
                curves = trajectory(params, build, until=until)
            except Exception as err:  # noqa: BLE001 - a curve is not worth a lost run
                self._failed("lr trajectory", err)
                curves = {}
            metrics += [Metric(name, float(v), now, int(step)) for name, pts in curves.items() for step, v in pts]
        return metrics, {**r["tags"], "mlflow.runName": r["name"]}

    def _summary(self, number, value, params, build, searched, trials, direction) -> None:
        import yaml
        from mlflow.entities import Metric, Param, RunTag

        from optsearch.search.report import schedule_figure, study_figures, trajectory

        if self.parent_id is None:
            return
        now = _ms()
        metrics = [Metric("best_value", float(value), now, 0)]
        texts = {"best_params.yaml": yaml.safe_dump({"trial": number, "value": value, "params": params,
                                                     "searched": searched, "build": build}, sort_keys=False)}
        figures = {}
        if build:
            from optsearch.spaces.export import to_python, trial_header

            try:
                texts["best_optimizer.py"] = to_python(params, build, header=trial_header(
                    self.study, number, "COMPLETE", value, build))
                curves = trajectory(params, build)
            except Exception as err:  # noqa: BLE001
                self._failed("export of the best trial", err)
                curves = {}
            metrics += [Metric(f"best_{name}", float(v), now, int(step))
                        for name, pts in curves.items() for step, v in pts]
            if curves:
                figures["best_schedule.png"] = schedule_figure(curves, f"best trial {number}: lr schedule")
        try:
            if self.own_process:
                import_importance_without_sklearn()
            figures.update(study_figures(trials, direction, self.metric))
        except Exception as err:  # noqa: BLE001 - plots are not worth a lost summary
            self._failed("study plots", err)
        flat = flatten(params)
        self._batch(self.parent_id, metrics,
                    params=[Param(f"best.{k}", param_text(flat[k])) for k in searched if k in flat],
                    tags=[RunTag("optsearch.best_trial", str(number))])
        for name, text in texts.items():
            self.client.log_text(self.parent_id, text, name)
        for name, figure in figures.items():
            if figure is not None:
                self.client.log_figure(self.parent_id, figure, name)

    def _close(self, status: str) -> None:
        for number, run_id in list(self.runs.items()):  # trials the coordinator never closed
            self.client.set_tag(run_id, "optsearch.state", "retried")
            self.client.set_terminated(run_id, "FAILED")
        self.runs.clear()
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status)
        from optsearch.search.study import checkpoint_sqlite

        checkpoint_sqlite(self.uri)


class _WholeRuns:
    """Whole trial runs (created, logged and ended at once), many in one transaction of
    MLflow's own SQL store, with MLflow's own table models, validation and conventions.

    Through ``MlflowClient`` a run costs three calls, each its own transaction of ORM
    queries (the experiment, the run, its inputs): about 10 ms of CPU, which on two cores
    the study waited for at its end. Here a batch of runs is one ``add_all``. What a
    reader sees is what the client writes: ``tests/test_tracking.py`` writes the same
    trials both ways and compares them through the client."""

    def __init__(self, store: Any):
        self.store = store
        self.locations: dict[str, str] = {}

    @classmethod
    def of(cls, client: Any) -> "_WholeRuns | None":
        """For a client on MLflow's SQL store; None for any other (a tracking server). The
        writer uses it on SQLite stores only, the ones the tests compare against the client."""
        try:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = client._tracking_client.store
        except Exception:  # noqa: BLE001 - another MLflow's layout: the client writes
            return None
        return cls(store) if isinstance(store, SqlAlchemyStore) else None

    def write(self, experiment_id: str, runs: list[dict]) -> None:
        """``runs``: name, tags (dict), started and ended (ms), status, metrics and params
        (MLflow's ``Metric`` and ``Param``, as ``log_batch`` takes them)."""
        import uuid

        from mlflow.entities import LifecycleStage, SourceType
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
        from mlflow.utils.uri import append_to_uri_path
        from mlflow.utils.validation import _validate_batch_log_data, _validate_param_keys_unique

        if experiment_id not in self.locations:
            self.locations[experiment_id] = self.store.get_experiment(experiment_id).artifact_location
        rows: list = []
        for r in runs:
            run_id = uuid.uuid4().hex
            tags = {**r["tags"], MLFLOW_RUN_NAME: r["name"]}  # as create_run adds it
            # Each item as log_batch checks it. Not its per-request limits (1,000 items, 100
            # params): the client splits a run's batch into requests that fit them.
            metrics, params, _ = _validate_batch_log_data(r["metrics"], r["params"], [])
            _validate_param_keys_unique(params)
            rows.append(SqlRun(
                name=r["name"], artifact_uri=append_to_uri_path(self.locations[experiment_id], run_id, "artifacts"),
                run_uuid=run_id, experiment_id=experiment_id, source_type=SourceType.to_string(SourceType.UNKNOWN),
                source_name="", entry_point_name="", user_id=tags.get(MLFLOW_USER, "unknown"), status=r["status"],
                start_time=r["started"], end_time=r["ended"], deleted_time=None, source_version="",
                lifecycle_stage=LifecycleStage.ACTIVE))
            rows += [SqlTag(run_uuid=run_id, key=k, value=v) for k, v in tags.items()]
            rows += [SqlParam(run_uuid=run_id, key=p.key, value=p.value) for p in params]
            latest: dict[str, SqlLatestMetric] = {}
            seen: set = set()
            for m in metrics:
                is_nan, value = self.store.sanitize_metric_value(m.value)
                identity = (m.key, m.timestamp, m.step, value, is_nan)
                if identity in seen:  # log_batch keeps one of identical points
                    continue
                seen.add(identity)
                rows.append(SqlMetric(run_uuid=run_id, key=m.key, value=value, timestamp=m.timestamp, step=m.step,
                                      is_nan=is_nan))
                old = latest.get(m.key)
                if old is None or (m.step, m.timestamp, value) > (old.step, old.timestamp, old.value):
                    latest[m.key] = SqlLatestMetric(run_uuid=run_id, key=m.key, value=value, timestamp=m.timestamp,
                                                    step=m.step, is_nan=is_nan)
            rows += latest.values()
        with self.store.ManagedSessionMaker(read_only=False) as session:
            session.add_all(rows)


class ThreadedWriter:
    """The writer on a background thread of this process (when not running under Ray)."""

    def __init__(self, uri: str, experiment: str):
        self._q: queue.Queue = queue.Queue()
        self._result: dict = {}
        self._thread = threading.Thread(target=self._loop, args=(uri, experiment), daemon=True,
                                         name="optsearch-mlflow")
        self._thread.start()

    def _loop(self, uri: str, experiment: str) -> None:
        writer = MlflowWriter(uri, experiment)
        while True:
            name, args = self._q.get()
            result = getattr(writer, name)(*args)
            if name == "close":
                self._result = result
                return

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self._q.put((name, args))

    def close(self, status: str = "FINISHED") -> dict:
        self._q.put(("close", (status,)))
        self._thread.join()
        return self._result


def writer_actor(uri: str, experiment: str, owner: Any = None, **options):
    """Start the MLflow writer as its own Ray actor (no CPU reserved: it mostly waits)."""
    import ray

    return ray.remote(MlflowWriter).options(num_cpus=0, **options).remote(uri, experiment, owner)


class Tracker:
    """What the coordinator holds: enqueue-only calls to a writer actor or thread.

    Trial events (starts, per-epoch metrics, ends) are buffered and sent as one batch every
    ``flush_every`` seconds by a timer thread of the tracker's own, grouped by trial, so a
    study's hundreds of events become a few calls to the writer (``MlflowWriter.apply``),
    nothing waits longer than that to show in MLflow, and little is left to write when the
    study ends.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str], config_text: str | None,
                 actor: Any = None, flush_every: float = 0.25, before: list[int] = (), description: str = "",
                 started: float | None = None):
        import ray

        self._groups: dict[int, dict] = {}
        self._lock = threading.Lock()
        if actor is None and ray.is_initialized():
            actor = writer_actor(uri, experiment)
        self._actor = actor
        if actor is not None:
            self._call = lambda name, *args: getattr(actor, name).remote(*args)
        else:
            writer = ThreadedWriter(uri, experiment)
            self._call = lambda name, *args: getattr(writer, name)(*args)
            self._writer = writer
        self._call("open", run_name, tags, config_text, before, description, started)
        self._stop = threading.Event()

        def tick() -> None:
            while not self._stop.wait(flush_every):
                self.flush()

        self._timer = threading.Thread(target=tick, daemon=True, name="optsearch-mlflow-flush")
        self._timer.start()

    def _group(self, number: int) -> dict:
        return self._groups.setdefault(number, {"number": number, "start": None, "points": [], "finish": None})

    def trial_started(self, number: int, params: dict, searched: dict, sampled: dict, tags: dict[str, str],
                      started: float, name: str) -> None:
        """``searched``: resolved path -> Optuna name of the knobs the trial searched (its
        params in MLflow); ``sampled``: Optuna's own params (a tag)."""
        with self._lock:
            self._group(number)["start"] = (params, searched, sampled, tags, started, name)

    def trial_metrics(self, number: int, step: int, metrics: dict[str, float]) -> None:
        with self._lock:
            self._group(number)["points"].append((step, metrics, _ms()))

    def trial_finished(self, record: dict) -> None:
        """``record``: number, state (TrialState), value, metrics (final), tags, name,
        params, build, ended, epochs_run (None when the trial ran to its end)."""
        with self._lock:
            self._group(record["number"])["finish"] = record

    def flush(self) -> None:
        with self._lock:
            if self._groups:
                self._call("apply", list(self._groups.values()))
                self._groups = {}

    def study_summary(self, *args) -> None:
        self.flush()
        self._call("study_summary", *args)

    def close(self, status: str = "FINISHED") -> dict:
        self._stop.set()
        self._timer.join(timeout=5)
        self.flush()
        if self._actor is None:
            return self._writer.close(status)
        import ray

        try:
            return ray.get(self._actor.close.remote(status))
        except ray.exceptions.RayError as err:  # the writer died: say so, keep the study's result
            return {"experiment_id": None, "parent_run_id": None, "unwritten": None,
                    "errors": [f"the MLflow writer died: {str(err).strip().splitlines()[0][:300]}"]}
        finally:
            ray.kill(self._actor)


class ExperimentRun:
    """The parent run of an experiment (``optsearch compare CONFIG``), written from the driver:
    its config, the arms' study runs nested under it (``adopt``), and the report with its
    figures as artifacts (``log_report``). MLflow failing never stops the experiment: every
    failure is kept in ``errors`` and returned by ``close``. A run that a dead driver left
    RUNNING for the same experiment is closed KILLED when the next one opens."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str], config_text: str | None):
        self.uri, self.errors = uri, []
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        try:
            from optsearch.search.study import creation_lock

            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            self.client = open_store(uri)
            with creation_lock(uri):
                exp = self.client.get_experiment_by_name(experiment)
                self.experiment_id = (exp.experiment_id if exp is not None else
                                      self.client.create_experiment(experiment, artifact_location=artifact_location(uri)))
            stale = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
            for r in stale:
                if (r.data.tags.get("optsearch.role") == "experiment"
                        and r.data.tags.get("optsearch.experiment") == tags.get("optsearch.experiment")):
                    self.client.set_terminated(r.info.run_id, "KILLED")
            self.run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id
            if config_text is not None:
                self.client.log_text(self.run_id, config_text, "config.yaml")
        except Exception as err:  # noqa: BLE001 - tracking must never take an experiment down
            self._failed("open", err)

    def _failed(self, what: str, err: Exception) -> None:
        message = f"mlflow {what} failed: {type(err).__name__}: {str(err).strip()[:300]}"
        log.warning(message)
        self.errors.append(message)

    def adopt(self, run_ids: list[str]) -> None:
        """Nest these runs (the arms' study runs) under this one."""
        for run_id in run_ids if self.run_id else []:
            try:
                self.client.set_tag(run_id, "mlflow.parentRunId", self.run_id)
            except Exception as err:  # noqa: BLE001
                self._failed("nesting a study run", err)

    def log_report(self, folder, metrics: dict[str, float]) -> None:
        """The report folder's files as artifacts under ``report/``, and headline metrics."""
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        try:
            now = _ms()
            points = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
            for i in range(0, len(points), 1000):
                self.client.log_batch(self.run_id, metrics=points[i:i + 1000])
            self.client.log_artifacts(self.run_id, str(folder), "report")
        except Exception as err:  # noqa: BLE001
            self._failed("logging the report", err)

    def close(self, status: str = "FINISHED") -> dict:
        if self.run_id is not None:
            try:
                self.client.set_terminated(self.run_id, status)
                from optsearch.search.study import checkpoint_sqlite

                checkpoint_sqlite(self.uri)
            except Exception as err:  # noqa: BLE001
                self._failed("closing the experiment run", err)
        return {"experiment_id": self.experiment_id, "parent_run_id": self.run_id, "errors": self.errors}
