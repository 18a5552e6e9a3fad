"""MLflow tracking: the only module that imports mlflow.

``MlflowWriter`` performs the writes. The coordinator never waits on it: inside Ray it runs
as its own actor process (calls are fire-and-forget and arrive in order), so neither
MLflow's start-up nor its SQLite commits take the coordinator's time or its GIL; outside
Ray a thread plays that part (``ThreadedWriter``). Either way ``close`` waits for the
writes to land.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from optsearch.search import urls

log = logging.getLogger(__name__)

STATES = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


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


def _now() -> int:
    return int(time.time() * 1000)


class MlflowWriter:
    """Synchronous MLflow writes for one invocation of a study (one parent run)."""

    def __init__(self, uri: str, experiment: str):
        import mlflow  # noqa: F401
        from mlflow import MlflowClient

        from optsearch.search.study import fast_sqlite

        for name in ("mlflow", "alembic"):  # mlflow sets its own INFO level on import
            logging.getLogger(name).setLevel(logging.WARNING)
        if urls.is_sqlite(uri):
            fast_sqlite()  # this process is the tracking store's only writer
        self.uri = uri
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=uri)
        self.errors: list[str] = []
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.runs: dict[int, str] = {}

    def _guard(self, what: str, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as err:  # tracking must never take a study down
            message = f"mlflow {what} failed: {type(err).__name__}: {err}"
            log.warning(message)
            self.errors.append(message)
            return None

    def _batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        metrics = list(metrics)
        for i in range(0, max(1, len(metrics)), 1000):  # MLflow's per-request limit
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000], params=params if i == 0 else (),
                                  tags=tags if i == 0 else ())

    # --- the protocol the coordinator calls ---------------------------------------------
    def open(self, run_name: str, tags: dict[str, str], config_text: str | None) -> None:
        self._guard("open", self._open, run_name, tags, config_text)

    def trial_started(self, number: int, params: dict, tags: dict[str, str]) -> None:
        self._guard("start", self._start, number, params, tags)

    def metrics_batch(self, points: list) -> None:
        """Buffered (number, step, metrics, timestamp) points, one log_batch per run."""
        from mlflow.entities import Metric

        by_run: dict[str, list] = {}
        for number, step, metrics, ts in points:
            run_id = self.runs.get(number)
            if run_id:
                by_run.setdefault(run_id, []).extend(Metric(k, float(v), ts, step) for k, v in metrics.items())
        for run_id, batch in by_run.items():
            self._guard("metrics", self._batch, run_id, batch)

    def trial_finished(self, number: int, state: str, value: float | None, tags: dict[str, str],
                       params: dict | None = None, budget: dict | None = None) -> None:
        self._guard("finish", self._finish, number, state, value, tags, params, budget)

    def study_summary(self, value: float, number: int, params: dict, budget: dict | None,
                      texts: dict[str, str]) -> None:
        self._guard("summary", self._summary, value, number, params, budget, texts)

    def close(self, status: str = "FINISHED") -> dict:
        self._guard("close", self._close, status)
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_id, "errors": self.errors}

    # --- the writes -------------------------------------------------------------------------
    def _open(self, run_name: str, tags: dict[str, str], config_text: str | None) -> None:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(self.experiment,
                                                               artifact_location=artifact_location(self.uri))
        else:
            self.experiment_id = exp.experiment_id
        self.parent_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id
        if config_text is not None:
            self.client.log_text(self.parent_id, config_text, "config.yaml")

    def _start(self, number: int, params: dict, tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        if self.parent_id is None:
            return
        tags = {"mlflow.parentRunId": self.parent_id, **tags}
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{number}").info.run_id
        self.runs[number] = run_id
        self._batch(run_id, params=[Param(k, str(v)) for k, v in flatten(params).items()])

    def _finish(self, number, state, value, tags, params, budget) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.runs.get(number)
        if run_id is None:
            return
        now = _now()
        metrics = [] if value is None else [Metric("value", float(value), now, 0)]
        if params is not None and budget is not None:
            # The lr (and momentum) of every step, rebuilt through the builders the trial used.
            from optsearch.search.report import trajectory

            curves = self._guard("lr trajectory", trajectory, params, budget) or {}
            metrics += [Metric(name, float(v), now, int(step)) for name, pts in curves.items() for step, v in pts]
        try:
            self._batch(run_id, metrics, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        finally:
            self.client.set_terminated(run_id, STATES[state])
            del self.runs[number]

    def _summary(self, value, number, params, budget, texts) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from optsearch.search.report import schedule_figure, trajectory

        if self.parent_id is None:
            return
        now = _now()
        metrics = [Metric("best_value", float(value), now, 0)]
        figure = None
        if budget:
            curves = self._guard("lr trajectory", trajectory, params, budget) or {}
            metrics += [Metric(f"best_{name}", float(v), now, int(step))
                        for name, pts in curves.items() for step, v in pts]
            if curves:
                figure = schedule_figure(curves, f"best trial {number}: lr schedule")
        self._batch(self.parent_id, metrics, params=[Param(k, str(v)) for k, v in flatten({"best": params}).items()],
                    tags=[RunTag("optsearch.best_trial", str(number))])
        for name, text in texts.items():
            self.client.log_text(self.parent_id, text, name)
        if figure is not None:
            self.client.log_figure(self.parent_id, figure, "best_schedule.png")

    def _close(self, status: str) -> None:
        for number, run_id in list(self.runs.items()):  # trials cut off by an interrupt
            self.client.set_tag(run_id, "optsearch.state", "failed")
            self.client.set_terminated(run_id, "KILLED")
        self.runs.clear()
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status)
        from optsearch.search.study import checkpoint_sqlite

        checkpoint_sqlite(self.uri)


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


def writer_actor(uri: str, experiment: str, **options):
    """Start the MLflow writer as its own Ray actor (no CPU reserved: it mostly waits)."""
    import ray

    return ray.remote(MlflowWriter).options(num_cpus=0, **options).remote(uri, experiment)


class Tracker:
    """What the coordinator holds: enqueue-only calls to a writer actor or thread.

    Per-epoch metrics are buffered and sent at most every ``flush_every`` seconds (and
    before a trial's end), so a study's hundreds of reports become a few writes; the
    coordinator calls ``tick`` on every progress poll so nothing waits longer than that.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str], config_text: str | None,
                 actor: Any = None, flush_every: float = 1.0):
        import ray

        self._pending: list = []
        self._flush_every = flush_every
        self._last = time.monotonic()
        if actor is None and ray.is_initialized():
            actor = writer_actor(uri, experiment)
        self._actor = actor
        if actor is not None:
            self._call = lambda name, *args: getattr(actor, name).remote(*args)
        else:
            writer = ThreadedWriter(uri, experiment)
            self._call = lambda name, *args: getattr(writer, name)(*args)
            self._writer = writer
        self._call("open", run_name, tags, config_text)

    def trial_started(self, number: int, params: dict, tags: dict[str, str]) -> None:
        self._call("trial_started", number, params, tags)

    def trial_metrics(self, number: int, step: int, metrics: dict[str, float]) -> None:
        self._pending.append((number, step, metrics, _now()))
        self.tick()

    def tick(self) -> None:
        if self._pending and time.monotonic() - self._last >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._call("metrics_batch", self._pending)
            self._pending = []
        self._last = time.monotonic()

    def trial_finished(self, *args) -> None:
        self.flush()
        self._call("trial_finished", *args)

    def study_summary(self, *args) -> None:
        self.flush()
        self._call("study_summary", *args)

    def close(self, status: str = "FINISHED") -> dict:
        self.flush()
        if self._actor is None:
            return self._writer.close(status)
        import ray

        try:
            return ray.get(self._actor.close.remote(status))
        except ray.exceptions.RayError as err:  # the writer died: say so, keep the study's result
            return {"experiment_id": None, "parent_run_id": None, "errors": [f"MLflow writer failed: {err}"]}
        finally:
            ray.kill(self._actor)
