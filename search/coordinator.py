"""The coordinator: the one owner of the Optuna study and of every MLflow write.

Workers call ``ask`` for work, ``report`` after each epoch (the answer says whether to
prune), and ``finish`` at the end. Running as a single-threaded Ray actor, it serialises
every storage write: SQLite sees one writer, and no tracking URI travels to workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from optsearch.errors import ConfigError
from optsearch.search import report as reports
from optsearch.search import study as studies
from optsearch.search.config import Config

STATE = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


@dataclass
class Running:
    trial: optuna.Trial
    worker: int
    params: dict
    last: dict = field(default_factory=dict)


def _peak_rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def trial_seed(study_seed: int, number: int) -> int:
    return (study_seed * 1_000_003 + number) % 2**31


def quiet_libraries() -> None:
    """Optuna's per-trial INFO lines and experimental warnings would drown the progress bar."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Coordinator:
    def __init__(self, cfg: Config, run_name: str | None = None, writer: Any = None):
        """``writer``: an MLflow writer actor started beside this one (see ``run.py``)."""
        quiet_libraries()
        self.cfg = cfg
        self.metric = cfg.study.metric
        self.issued = 0
        self.running: dict[int, Running] = {}
        self.done = {"complete": 0, "pruned": 0, "failed": 0}
        self.errors: list[str] = []
        self.stopping = False
        self.best_value: float | None = None
        self.tracker = None
        # Bad input found here (an unreadable storage, a stored study that disagrees with
        # the config) goes back to the driver as a ConfigError, not an actor crash.
        self.fatal: tuple | None = None
        try:
            self.study, self.storage = studies.open_study(cfg.study, conditional=cfg.space.conditional)
            studies.check_matches(self.study, cfg.study)
            studies.claim(self.study, cfg.study, time.time())
            self.beat = time.monotonic()
        except ConfigError as err:
            self.fatal = (err.key, err.value, err.message)
        except Exception as err:
            self.fatal = ("study.storage", cfg.study.storage, f"cannot open the study: {type(err).__name__}: {err}")
        if self.fatal:
            self.abandoned, self.finished_before, self.budget = [], 0, 0
            return
        self.abandoned = studies.abandon_stale(self.study, self.storage)
        self.finished_before = studies.finished_count(self.study)
        self.budget = max(0, cfg.study.n_trials - self.finished_before)
        best = reports.best_trial(self.study)
        if best is not None:
            self.best_value = best.value
        if cfg.tracking.enabled:
            from optsearch.search.tracking import Tracker

            self.tracker = Tracker(
                cfg.tracking.uri, cfg.experiment,
                run_name or f"{cfg.study.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                {"optsearch.study": cfg.study.name, "optsearch.storage": cfg.study.storage,
                 "optsearch.role": "study", "optsearch.config": cfg.path},
                yaml.safe_dump(cfg.raw, sort_keys=False),
                actor=writer,
            )

    # --- the worker protocol -------------------------------------------------------------
    def ask(self, worker: int) -> dict | None:
        """The next trial's job, or None when the budget is spent or the study is stopping."""
        while not self.stopping and self.issued < self.budget:
            self.issued += 1
            trial = self.study.ask()
            try:
                params = self.cfg.space.sample(trial)
            except Exception as err:  # a sampled point the builders reject: record, go on
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
                self.errors.append(f"trial {trial.number}: {type(err).__name__}: {err}")
                self.study.tell(trial, state=TrialState.FAIL)
                self.done["failed"] += 1
                continue
            trial.set_user_attr("params", params)
            self.running[trial.number] = Running(trial, worker, params)
            if self.tracker:
                self.tracker.trial_started(trial.number, params, {"optsearch.trial_number": str(trial.number),
                                                                   "optsearch.state": "running"})
            return {"number": trial.number, "params": params,
                    "seed": trial_seed(self.cfg.study.seed, trial.number)}
        return None

    def report(self, number: int, step: int, metrics: dict[str, float]) -> bool:
        """Record one epoch's metrics; True means: prune this trial now."""
        run = self.running[number]
        if self.metric not in metrics:
            raise KeyError(f"reported metrics {sorted(metrics)} lack the study metric {self.metric!r}")
        run.last = metrics
        run.trial.report(metrics[self.metric], step)
        if self.tracker:
            self.tracker.trial_metrics(number, step, metrics)
        return self.stopping or run.trial.should_prune()

    def finish(self, number: int, state: str, metrics: dict[str, float] | None = None,
               budget: dict | None = None, error: str | None = None) -> None:
        """A trial ended: ``state`` is complete, pruned or failed."""
        value = None
        metrics = metrics or {}
        if state == "complete":
            value = metrics.get(self.metric)
            if value is None or value != value:  # missing or NaN
                state, error = "failed", error or f"final metrics lack a finite {self.metric!r}: {metrics}"
        if budget is not None:
            self.running[number].trial.set_user_attr("build", budget)
        self._tell(number, state, value, metrics, error=error, budget=budget)

    def worker_lost(self, worker: int, reason: str) -> None:
        """A worker died (its process crashed): its trial fails, the study goes on."""
        for number, run in list(self.running.items()):
            if run.worker == worker:
                self._tell(number, "failed", None, run.last, error=f"worker lost: {reason}")

    def stop(self) -> None:
        """Hand out no more trials; running ones are pruned at their next report."""
        self.stopping = True

    # --- bookkeeping ---------------------------------------------------------------------
    def _tell(self, number: int, state: str, value: float | None, metrics: dict, *,
              error: str | None = None, budget: dict | None = None) -> None:
        run = self.running.pop(number, None)
        trial_obj = run.trial if run else number
        if error:
            self.errors.append(f"trial {number}: {error}")
            if run is not None:
                run.trial.set_user_attr("error", error[:2000])
        for k, v in metrics.items():
            if k != self.metric and run is not None:
                run.trial.set_user_attr(f"final_{k}", v)
        self.study.tell(trial_obj, value if state == "complete" else None, state=STATE[state])
        self.done[state] += 1
        if state == "complete" and value is not None:
            better = self.best_value is None or (
                value > self.best_value if self.cfg.study.direction == "maximize" else value < self.best_value
            )
            if better:
                self.best_value = value
        if self.tracker:
            tags = {"optsearch.trial_number": str(number), "optsearch.state": state}
            if error:
                tags["optsearch.error"] = error[:5000]
            self.tracker.trial_finished(number, state, value, tags, run.params if run else None, budget)

    # --- views ---------------------------------------------------------------------------
    def progress(self) -> dict:
        if self.tracker:
            self.tracker.tick()  # buffered epoch metrics reach MLflow within a second
        if not self.fatal and time.monotonic() - self.beat > studies.STALE_AFTER_S / 4:
            studies.heartbeat(self.study, time.time())  # the driver polls progress every 0.25 s
            self.beat = time.monotonic()
        return {
            "total": self.cfg.study.n_trials,
            "before": self.finished_before,
            "budget": self.budget,
            **self.done,
            "running": len(self.running),
            "best": self.best_value,
            "stopping": self.stopping,
            "peak_rss_mb": _peak_rss_mb(),
            "fatal": self.fatal,
        }

    def close(self, interrupted: bool = False) -> dict:
        """Fail what is still running, log the best trial on the parent run, and summarise."""
        if self.fatal:
            return {"fatal": self.fatal}
        for number, run in list(self.running.items()):
            self._tell(number, "failed", None, run.last, error="interrupted")
        best = reports.best_trial(self.study)
        summary: dict[str, Any] = {
            "study": self.cfg.study.name,
            "storage": self.cfg.study.storage,
            "counts": reports.counts(self.study),
            "this_run": dict(self.done),
            "abandoned": self.abandoned,
            "errors": self.errors[-20:],
            "best": None,
        }
        if best is not None:
            summary["best"] = {"number": best.number, "value": best.value,
                               "params": best.user_attrs.get("params", best.params)}
        try:
            studies.release(self.study)
            studies.flush_study(self.storage)  # the persistent store holds every trial before we return
            studies.checkpoint_sqlite(self.cfg.study.storage)
        except Exception as err:
            summary["errors"].append(f"saving to {self.cfg.study.storage}: {err}")
        finally:
            if self.tracker:
                try:
                    if best is not None:
                        self._log_best(best)
                finally:
                    info = self.tracker.close("KILLED" if interrupted else "FINISHED")
                    summary["tracking"] = {**info, "uri": self.cfg.tracking.uri}
        return summary

    def _log_best(self, best: optuna.trial.FrozenTrial) -> None:
        params = best.user_attrs.get("params", best.params)
        budget = best.user_attrs.get("build")
        texts: dict[str, str] = {"best_params.yaml": yaml.safe_dump(
            {"trial": best.number, "value": best.value, "params": params, "build": budget}, sort_keys=False)}
        if budget:
            try:
                from optsearch.spaces.export import to_python

                texts["best_optimizer.py"] = to_python(
                    params, budget, header=f"study {self.cfg.study.name}, trial {best.number}")
            except Exception as err:
                self.errors.append(f"export of trial {best.number}: {err}")
        self.tracker.study_summary(best.value, best.number, params, budget, texts)
