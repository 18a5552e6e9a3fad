"""The coordinator: the single writer of the Optuna study while a run lasts.

Workers call ``ask`` for a ``Job``, ``report`` after each epoch (the ``Answer`` says go on,
prune, or fail) and ``finish`` with the trial's ``Outcome``; the driver polls ``progress``
and calls ``worker_lost`` and ``close``. Running as a single-threaded Ray actor, it
serialises every write to the study. Its other pieces each live elsewhere: opening and
claiming the study (``study.prepare``, in the driver), the claim's heartbeat (its own
timer thread here), MLflow (``tracking.Tracker``, which writes from its own actor).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from optsearch.search import study as studies
from optsearch.search.config import Config
from optsearch.search.protocol import Answer, Failure, Job, Outcome, Progress, finite
from optsearch.search.storage import MirroredStorage


@dataclass
class Running:
    trial: optuna.Trial
    slot: int
    params: dict
    attempt: int
    started: float  # time.time()
    last_step: int | None = None  # the last step (epoch) it reported
    reported: set = field(default_factory=set)  # the names of the metrics it reported


def trial_seed(study_seed: int, number: int) -> int:
    return (study_seed * 1_000_003 + number) % 2**31


def quiet_libraries() -> None:
    """Optuna's per-trial INFO lines and experimental warnings would drown the progress bar."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Heartbeat:
    """Renews the study's claim every ``studies.BEAT_EVERY_S`` on a thread of its own, so a
    slow driver poll or a long write never lets the claim go stale."""

    def __init__(self, storage, name: str, owner: studies.Owner):
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(studies.BEAT_EVERY_S):
                try:
                    studies.heartbeat(storage, name, owner)
                except Exception:  # noqa: BLE001 - a missed beat only ages the claim
                    pass

        self._thread = threading.Thread(target=beat, daemon=True, name="optsearch-heartbeat")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class SampleAhead:
    """Samples the next trial while the workers train, so the ask a worker sees is a dequeue.

    A thread of its own keeps one trial sampled ahead: it is created WAITING
    (Optuna's own queue, which ``study.ask()`` pops first) and its params are suggested
    there, by the study's sampler, with whatever has finished by then; TPE's constant liar
    counts the RUNNING trials. A popped trial becomes RUNNING then, so its start time is when
    it is handed out; its params are already stored and ``Space.sample`` only reads them
    back. Trials sampled ahead but never handed out stay WAITING: the next run uses them.
    One lock keeps ``ask`` from popping a trial while its params are being written.

    One, not one per worker: Optuna's samplers do not see WAITING trials, so a second point
    sampled ahead would be drawn blind to the first (two near-equal points); with one, each
    point sampled ahead knows every point handed out (RUNNING by then). A worker that asks
    while the point is taken samples as a plain ask does.

    ``auto`` (``study.sample_ahead: auto``, the default) starts sampling ahead only once a
    plain ask's sampling costs a worker more than ``AUTO_SHARE`` of a trial's time (medians
    of the last 20): a point sampled ahead knows one finished trial fewer than a plain ask
    would, which a short study of cheap asks should not pay for; at thousands of trials,
    where TPE's ask takes tens of milliseconds, it starts. Once started, it stays on.
    """

    depth = 1
    AUTO_SHARE = 0.02
    AUTO_MIN = 5  # observations of each before deciding

    def __init__(self, coordinator: "Coordinator", auto: bool = False):
        self.c = coordinator
        self.engaged = not auto
        self._asks: deque[float] = deque(maxlen=20)
        self._trials: deque[float] = deque(maxlen=20)
        self.study_id = coordinator.storage.get_study_id_from_name(coordinator.cfg.study.name)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="optsearch-sample-ahead")
        self._thread.start()

    def ask(self, take: Callable[[], Running]) -> Running:
        """``take()``: the coordinator's pop of the next trial (``Coordinator._take``)."""
        with self._lock:
            running = take()
        self._wake.set()
        return running

    def observe(self, ask_s: float | None = None, trial_s: float | None = None) -> None:
        """``auto``: a plain ask's sampling time, or a finished trial's duration."""
        if self.engaged:
            return
        if ask_s is not None:
            self._asks.append(ask_s)
        if trial_s is not None:
            self._trials.append(trial_s)
        if (len(self._asks) >= self.AUTO_MIN and len(self._trials) >= self.AUTO_MIN
                and statistics.median(self._asks) > self.AUTO_SHARE * statistics.median(self._trials)):
            self.engaged = True
            self._wake.set()

    def _waiting(self) -> int:
        return len(self.c.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            while self.engaged and not self._stop.is_set() and not self.c.stopping:
                with self._lock:
                    with self.c.budget:  # counted, running and waiting as one
                        waiting = self._waiting()
                        if (waiting >= self.depth
                                or self.c.counted + len(self.c.running) + waiting >= self.c.cfg.study.n_trials):
                            break
                        tid = self.c.storage.create_new_trial(self.study_id,
                                                              optuna.trial.create_trial(state=TrialState.WAITING))
                    # Optuna makes Trial objects in Study.ask(); building one here for a WAITING
                    # trial is the only way to have its sampler suggest params before it runs.
                    trial = optuna.trial.Trial(self.c.study, tid)
                    try:
                        self.c.cfg.space.sample(trial)
                    except Exception:  # noqa: BLE001 - sampled again at ask, where it is recorded as rejected
                        pass

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)


class Coordinator:
    def __init__(self, cfg: Config, owner: studies.Owner, writer: Any = None, run_name: str | None = None,
                 started: float | None = None):
        """``owner``: the driver's claim (``study.prepare``); ``writer``: an MLflow writer
        actor started beside this one (``run.py``)."""
        quiet_libraries()
        studies.exit_with(owner)
        self.cfg = cfg
        self.metric = cfg.study.metric
        self.storage = MirroredStorage(studies.make_storage(cfg.study.storage))
        epochs = cfg.trainer.options.get("epochs")
        self.study = studies.open_study(cfg.study, self.storage, conditional=cfg.space.conditional,
                                        epochs=epochs if isinstance(epochs, int) else None)
        self.counted_before = studies.counted(self.study)
        self.running: dict[int, Running] = {}
        self.tally: Counter = Counter()  # this run: complete, pruned, failed (counted), retried
        # Held while running or tally change, and while the sample-ahead thread reads them to
        # queue a trial: the budget it sees is never one short.
        self.budget = threading.RLock()
        self.finished_by_slot: Counter = Counter()  # trials each worker slot finished since its last loss
        self.notes: list[str] = []  # what the summary must say: failures, given-up params
        self.stopping = False
        best = _best(self.study)
        self.best = None if best is None else best.value
        self.heartbeat = Heartbeat(self.storage, cfg.study.name, owner)
        self.sampler = (SampleAhead(self, auto=cfg.study.sample_ahead == "auto") if cfg.study.sample_ahead
                        else None)
        self.tracker = None
        if cfg.tracking.enabled and self.counted_before < cfg.study.n_trials:  # nothing to run: no parent run
            from optsearch.search.tracking import Tracker

            self.tracker = Tracker(
                cfg.tracking.uri, cfg.experiment,
                run_name or f"{cfg.study.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                {"optsearch.study": cfg.study.name, "optsearch.storage": cfg.study.storage,
                 "optsearch.metric": cfg.study.metric, "optsearch.role": "study", "optsearch.config": cfg.path},
                yaml.safe_dump(cfg.raw, sort_keys=False),
                actor=writer,
                before=[t.number for t in self.study.get_trials(deepcopy=False, states=studies.FINISHED)],
                description=_description(cfg),
                started=started,
            )

    # --- the worker protocol -------------------------------------------------------------
    @property
    def counted(self) -> int:
        return self.counted_before + self.tally["complete"] + self.tally["pruned"] + self.tally["failed"]

    def ask(self, slot: int) -> Job | None:
        """The next trial's job, or None when the budget is spent or the study is stopping.
        Queued trials (retries) come before new points."""
        while not self.stopping and self.counted + len(self.running) < self.cfg.study.n_trials:
            t0 = time.perf_counter()
            running = self.sampler.ask(lambda: self._take(slot)) if self.sampler else self._take(slot)
            trial, attempt = running.trial, running.attempt
            try:
                params = self.cfg.space.sample(trial)
            except Exception as err:  # noqa: BLE001 - a sampled point the space rejects: record, go on
                self._record(running, Outcome.failed(Failure.REJECTED, f"{type(err).__name__}: {err}"))
                continue
            if self.sampler and not self.sampler.engaged and studies.RETRY_OF not in trial.user_attrs:
                self.sampler.observe(ask_s=time.perf_counter() - t0)  # a new point: the sampler ran
            running.params = params
            trial.set_user_attr("params", params)
            if self.tracker:
                searched = self.cfg.space.searched(params, trial.params)
                self.tracker.trial_started(trial.number, params, searched, dict(trial.params),
                                           self._tags(trial.number), running.started, _run_name(trial.number, params))
            first = trial.user_attrs.get(studies.RETRY_OF, trial.number)  # a retry runs with the same seed
            return Job(trial.number, params, trial_seed(self.cfg.study.seed, first), attempt)
        return None

    def _take(self, slot: int) -> Running:
        """The next trial (a queued one first), running from now: popped from the queue and
        entered in ``running`` as one step under ``budget``, as ``_record`` leaves it."""
        with self.budget:
            trial = self.study.ask()
            running = Running(trial, slot, {}, trial.user_attrs.get(studies.ATTEMPT, 0), time.time())
            self.running[trial.number] = running
        return running

    def report(self, number: int, step: int, metrics: dict[str, float], build: dict | None = None) -> Answer:
        """Record one epoch's metrics; the answer says whether to go on, prune or fail.
        ``build``: the trial's training budget, recorded with its first report (a
        schedule-aware pruner needs its length)."""
        run = self.running.get(number)
        if run is None:  # the trial already ended (its worker was lost)
            return Answer(fail="the trial was already ended")
        if build is not None and run.last_step is None:
            run.trial.set_user_attr("build", build)
        run.last_step = step
        run.reported.update(metrics)
        if self.tracker:
            self.tracker.trial_metrics(number, step, metrics)
        value = metrics.get(self.metric)
        if value is None:
            return Answer(fail=f"reported metrics {sorted(metrics)} lack the study metric {self.metric!r}")
        if not finite(value):
            reason = f"{self.metric} is {value} at step {step}"
            return Answer(prune=True) if self.cfg.study.nan == "prune" else Answer(fail=reason)
        run.trial.report(value, step)
        return Answer(prune=run.trial.should_prune())

    def finish(self, number: int, outcome: Outcome) -> None:
        """A trial ended; ``outcome`` from its worker."""
        run = self.running.get(number)
        if run is None:
            return
        if outcome.state == TrialState.COMPLETE:
            value = outcome.metrics.get(self.metric)
            if value is None:
                outcome = Outcome.failed(Failure.TRAINER, f"the final metrics {sorted(outcome.metrics)} lack "
                                                          f"{self.metric!r}", metrics=outcome.metrics, build=outcome.build)
            elif not finite(value):
                outcome = Outcome.failed(Failure.NON_FINITE, f"the final {self.metric} is {value}",
                                         metrics=outcome.metrics, build=outcome.build)
        self._record(run, outcome)

    def worker_lost(self, slot: int, reason: str) -> dict:
        """A worker actor died: its trial (if any) fails as ``lost`` and is retried.
        Returns ``{"trial": that trial's number or None, "finished": trials the slot
        finished since its previous loss}``."""
        lost = None
        for number, run in list(self.running.items()):
            if run.slot == slot:
                self._record(run, Outcome.failed(Failure.LOST, f"worker lost: {reason}"))
                lost = number
        return {"trial": lost, "finished": self.finished_by_slot.pop(slot, 0)}

    def stop(self) -> None:
        """Hand out no more trials."""
        self.stopping = True

    # --- bookkeeping ---------------------------------------------------------------------
    def _tags(self, number: int) -> dict[str, str]:
        return {"optsearch.study": self.cfg.study.name, "optsearch.trial_number": str(number)}

    def _record(self, run: Running, outcome: Outcome) -> None:
        """Tell Optuna (and MLflow) how ``run`` ended; retry its params when the
        infrastructure failed it and attempts are left."""
        trial, state = run.trial, outcome.state
        if self.sampler and state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.sampler.observe(trial_s=time.time() - run.started)
        if outcome.failure not in (Failure.LOST, Failure.INTERRUPTED):
            self.finished_by_slot[run.slot] += 1
        for k, v in outcome.metrics.items():
            if k != self.metric:
                trial.set_user_attr(f"final_{k}", v)
        if outcome.build is not None:
            trial.set_user_attr("build", outcome.build)
        if outcome.resources.get("node"):
            trial.set_user_attr("node", outcome.resources["node"])  # where it ran
        retried = False
        if state == TrialState.FAIL:
            failure = outcome.failure or Failure.TRAINER
            trial.set_user_attr(studies.FAILURE, failure.value)
            trial.set_user_attr("error", (outcome.error or failure.value)[:2000])
            self.notes.append(f"trial {trial.number} failed ({failure.value}): "
                              f"{(outcome.error or '').strip().splitlines()[0][:300] if outcome.error else ''}")
            if failure.infrastructure:
                attempt = run.attempt + (failure != Failure.INTERRUPTED)
                retried = attempt <= self.cfg.study.max_retries
                if retried:
                    trial.set_user_attr(studies.RETRIED, True)
                else:
                    self.notes.append(f"trial {trial.number}: its params failed {attempt} times by {failure.value}; "
                                      "given up, the study goes on with others")
        value = outcome.metrics.get(self.metric) if state == TrialState.COMPLETE else None
        self.study.tell(trial, value, state=state)
        if retried:
            studies.requeue(self.study, trial, attempt)
        with self.budget:  # leaves running and is counted as one step (the sample-ahead thread reads both)
            self.running.pop(trial.number, None)
            self.tally["retried" if retried else {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                                                  TrialState.FAIL: "failed"}[state]] += 1
        if value is not None and (self.best is None or (value > self.best) == (self.cfg.study.direction == "maximize")):
            self.best = value
        if self.tracker:
            name = _state_name(state, outcome.failure)
            tags = {**self._tags(trial.number), "optsearch.state": name}
            if outcome.error:
                tags["optsearch.error"] = outcome.error[:5000]
            for key in ("device", "node"):
                if outcome.resources.get(key):
                    tags[f"optsearch.{key}"] = outcome.resources[key]
            epochs = run.last_step
            ended = time.time()
            suffix = {"pruned": f" (pruned @{epochs})", "failed": " (failed)", "retried": " (retried)"}.get(name, "")
            self.tracker.trial_finished({
                "number": trial.number, "state": state, "value": value, "tags": tags,
                "name": _run_name(trial.number, run.params) + suffix,
                # final metrics that the epochs did not report already (test_acc), the trial's own time
                "metrics": {**{k: v for k, v in outcome.metrics.items() if k not in run.reported},
                            "wall_time_s": ended - run.started,
                            **({"peak_gpu_mb": outcome.resources["peak_gpu_mb"]}
                               if "peak_gpu_mb" in outcome.resources else {})},
                "params": run.params, "build": outcome.build, "ended": ended,
                "epochs_run": None if state == TrialState.COMPLETE else epochs, "last_step": epochs,
            })

    # --- views ---------------------------------------------------------------------------
    def progress(self) -> Progress:
        return Progress(target=self.cfg.study.n_trials, counted=self.counted, complete=self.tally["complete"],
                        pruned=self.tally["pruned"], failed=self.tally["failed"], retried=self.tally["retried"],
                        running=len(self.running), best=self.best, stopping=self.stopping)

    def peak_rss_mb(self) -> float:
        """This process's peak resident memory (benchmarks)."""
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024

    def close(self, interrupted: bool = False) -> dict:
        """Fail what is still running (queued again), persist, close MLflow; the summary."""
        for run in list(self.running.values()):
            self._record(run, Outcome.failed(Failure.INTERRUPTED, "interrupted: the run stopped before the trial "
                                                                  "ended; it runs again at the next start"))
        best = _best(self.study)
        summary: dict[str, Any] = {
            "study": self.cfg.study.name,
            "storage": self.cfg.study.storage,
            "target": self.cfg.study.n_trials,
            "counts": studies.counts(self.study),
            "this_run": {k: self.tally[k] for k in ("complete", "pruned", "failed", "retried")},
            "notes": self.notes[-30:],
            "best": None if best is None else {
                "number": best.number, "value": best.value, "params": best.user_attrs.get("params", best.params),
                "searched": self.cfg.space.searched(best.user_attrs.get("params", best.params), best.params)},
            "errors": [],
        }
        self.heartbeat.stop()
        if self.sampler:
            self.sampler.stop()
        if self.tracker and best is not None:  # the writer draws it from these trials while the storage saves
            try:
                params = best.user_attrs.get("params", best.params)
                self.tracker.study_summary(best.number, best.value, params, best.user_attrs.get("build"),
                                           self.cfg.space.searched(params, best.params),
                                           self.study.get_trials(deepcopy=False), self.study.direction)
            except Exception as err:  # noqa: BLE001 - said in the summary; the study's result stands
                summary["errors"].append(f"the MLflow summary: {type(err).__name__}: {err}")
        try:
            self.storage.close()  # every write is in the persistent store before we return
            self.storage.backend.engine.dispose()  # no connection outlives the run (WAL files settle)
            studies.checkpoint_sqlite(self.cfg.study.storage)
        except Exception as err:  # noqa: BLE001 - said in the summary
            summary["errors"].append(f"saving to {self.cfg.study.storage}: {err}")
        finally:
            if self.tracker:
                summary["tracking"] = {**self.tracker.close("KILLED" if interrupted else "FINISHED"),
                                       "uri": self.cfg.tracking.uri}
        return summary


def _description(cfg: Config) -> str:
    """What the study searches, for the MLflow experiment and its parent runs (Markdown:
    a summary line, then every choice and searched knob)."""
    opt, sched = cfg.space.optimizer.options, cfg.space.schedule.options
    return (f"optsearch study **{cfg.study.name}**: {' | '.join(opt)} with {' | '.join(sched)}, "
            f"{cfg.study.direction} {cfg.study.metric}, {cfg.study.n_trials} trials.\n\n"
            + "\n".join(f"    {line}" for line in cfg.space.summary()))


def _run_name(number: int, params: dict) -> str:
    """``t5 adamw+cosine``: the trial's number, variant and schedule."""
    return f"t{number} {params['optimizer']['name']}+{params['schedule']['name']}" if params else f"t{number}"


def _state_name(state: TrialState, failure: Failure | None) -> str:
    if state == TrialState.FAIL and failure is not None and failure.infrastructure:
        return "retried"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[state]


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None
