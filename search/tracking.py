"""MLflow tracking: the only module that imports mlflow.

The coordinator calls these methods from its ask/report/tell path; they only enqueue.
One background thread performs the writes in order, batching metric points per run, so
a slow tracking store never delays a trial. ``close`` drains the queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

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


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts beside a local sqlite store (MLflow 3 would otherwise use ./mlruns of the cwd)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").as_uri()
    return None


def ui_link(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    # MLflow 3.17 opens experiments in its GenAI view; this shows the training runs table.
    return f"{host}/#/experiments/{experiment_id}?workflowType=machine_learning"


class Tracker:
    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str],
                 config_text: str | None = None):
        self.uri = uri
        self.experiment = experiment
        self.errors: list[str] = []
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._runs: dict[int, str] = {}
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="optsearch-mlflow", daemon=True)
        self._thread.start()
        self._q.put(("open", (run_name, tags, config_text)))

    # --- called by the coordinator (enqueue only) ---------------------------------------
    def trial_started(self, number: int, params: dict, tags: dict[str, str]) -> None:
        self._q.put(("start", (number, params, tags)))

    def trial_metrics(self, number: int, step: int, metrics: dict[str, float]) -> None:
        self._q.put(("metrics", (number, step, metrics, int(time.time() * 1000))))

    def trial_finished(self, number: int, state: str, value: float | None, tags: dict[str, str],
                       curves: dict[str, list] | None = None) -> None:
        self._q.put(("finish", (number, state, value, tags, curves or {})))

    def study_summary(self, metrics: dict[str, float], params: dict, tags: dict[str, str],
                      texts: dict[str, str], curves: dict[str, list], figures: dict[str, Any]) -> None:
        self._q.put(("summary", (metrics, params, tags, texts, curves, figures)))

    def close(self, status: str = "FINISHED", timeout: float = 120.0) -> dict:
        self._q.put(("close", (status,)))
        self._q.put(None)
        self._thread.join(timeout)
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_id, "errors": self.errors}

    # --- the writer thread ----------------------------------------------------------------
    def _loop(self) -> None:
        import mlflow  # noqa: F401  (heavy import kept off the coordinator's start-up path)
        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):  # mlflow sets its own INFO level on import
            logging.getLogger(name).setLevel(logging.WARNING)

        self._client = MlflowClient(tracking_uri=self.uri)
        done = False
        while not done:
            ops = [self._q.get()]
            while True:  # drain what is pending, to batch metric writes
                try:
                    ops.append(self._q.get_nowait())
                except queue.Empty:
                    break
            pending: dict[int, list] = {}
            for op in ops:
                if op is None:
                    done = True
                    break
                kind, args = op
                if kind == "metrics":
                    pending.setdefault(args[0], []).append(args[1:])
                    continue
                self._flush_metrics(pending)
                self._do(kind, args)
            self._flush_metrics(pending)

    def _do(self, kind: str, args: tuple) -> None:
        try:
            getattr(self, f"_op_{kind}")(*args)
        except Exception as err:  # tracking must never take a study down
            message = f"mlflow {kind} failed: {type(err).__name__}: {err}"
            log.warning(message)
            self.errors.append(message)

    def _flush_metrics(self, pending: dict[int, list]) -> None:
        from mlflow.entities import Metric

        for number, points in pending.items():
            run_id = self._runs.get(number)
            if run_id is None:
                continue
            metrics = [Metric(k, float(v), ts, step) for step, m, ts in points for k, v in m.items()]
            self._do("batch", (run_id, metrics))
        pending.clear()

    def _op_batch(self, run_id: str, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow's per-request limit
            self._client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def _op_open(self, run_name: str, tags: dict[str, str], config_text: str | None) -> None:
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is None:
            self.experiment_id = self._client.create_experiment(
                self.experiment, artifact_location=artifact_location(self.uri, self.experiment)
            )
        else:
            self.experiment_id = exp.experiment_id
        run = self._client.create_run(self.experiment_id, tags=tags, run_name=run_name)
        self.parent_id = run.info.run_id
        if config_text is not None:
            self._client.log_text(self.parent_id, config_text, "config.yaml")

    def _op_start(self, number: int, params: dict, tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        if self.parent_id is None:
            return
        tags = {"mlflow.parentRunId": self.parent_id, **tags}
        run = self._client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{number}")
        self._runs[number] = run.info.run_id
        flat = flatten(params)
        self._client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flat.items()])

    def _op_finish(self, number: int, state: str, value: float | None, tags: dict[str, str],
                   curves: dict[str, list]) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self._runs.pop(number, None)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(v), now, int(step)) for name, pts in curves.items() for step, v in pts]
        if value is not None:
            metrics.append(Metric("value", float(value), now, 0))
        self._op_batch(run_id, metrics)
        self._client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self._client.set_terminated(run_id, STATES[state])

    def _op_summary(self, metrics, params, tags, texts, curves, figures) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if self.parent_id is None:
            return
        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        points += [Metric(name, float(v), now, int(step)) for name, pts in curves.items() for step, v in pts]
        self._op_batch(self.parent_id, points)
        self._client.log_batch(
            self.parent_id,
            params=[Param(k, str(v)) for k, v in flatten(params).items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        for name, text in texts.items():
            self._client.log_text(self.parent_id, text, name)
        for name, fig in figures.items():
            self._client.log_figure(self.parent_id, fig, name)

    def _op_close(self, status: str) -> None:
        for number, run_id in list(self._runs.items()):  # trials cut off by an interrupt
            self._client.set_tag(run_id, "optsearch.state", "failed")
            self._client.set_terminated(run_id, "KILLED")
        self._runs.clear()
        if self.parent_id is not None:
            self._client.set_terminated(self.parent_id, status)
