"""``optsearch compare CONFIG``: one experiment, several arms, one verdict.

Each arm is its own Optuna study, ``<experiment>.<arm>``, with the same trainer, the same
trial budget and the same sampler (QMC, no pruning, unless the config says otherwise). The
run has two phases on one set of workers:

1. **Search.** One coordinator actor (``ArmsCoordinator``) holds a ``Coordinator`` per arm
   and hands each worker a trial of the arm with the fewest trials counted or running, so
   the arms advance together: a stopped experiment has covered every arm equally, and the
   next start resumes each study like ``optsearch study`` does.
2. **Seed re-runs.** Each arm's top-k configs are queued again, with the same seed list for
   every arm, in a study of their own (``<experiment>.<arm>.reruns``); they run the same
   way, interleaved. A re-run trial carries ``optsearch.rerun = {"of": search trial
   number, "seed": seed}`` and runs with that seed.

Then ``search/verdict.py`` reads both kinds of studies and writes the report. Workers,
replacement of dead ones, claims, recovery and counting are ``optsearch study``'s own
(``run.work``, ``study.prepare``, ``Coordinator``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from optsearch.search import cluster
from optsearch.search import study as studies
from optsearch.search.config import Config, Experiment
from optsearch.search.coordinator import Coordinator
from optsearch.search.protocol import Job, Outcome, Progress
from optsearch.search.run import _here, check_tracking, init_ray, work
from optsearch.search.workers import plan

RERUN = "optsearch.rerun"  # trial user attr of a seed re-run: {"of": search trial number, "seed": seed}


# --- one actor, several studies -------------------------------------------------------------
class ArmsCoordinator:
    """The coordinator of an experiment's phase: one ``Coordinator`` per arm in one actor.

    ``ask`` hands out a trial of the arm with the fewest trials counted or running (ties in
    the config's order), so arms advance together; the ``Job`` names its arm, and the
    worker's ``report`` and ``finish`` calls name it back. With ``reruns``, each job runs
    with the seed its queued trial carries (``RERUN``) instead of one derived from its number.
    """

    def __init__(self, cfgs: dict[str, Config], owners: dict[str, studies.Owner], writers: dict[str, Any],
                 run_names: dict[str, str], reruns: bool = False):
        self.order = list(cfgs)
        self.arms = {arm: Coordinator(cfg, owners[arm], writers.get(arm), run_names.get(arm))
                     for arm, cfg in cfgs.items()}
        self.reruns = reruns
        self.maximize = next(iter(cfgs.values())).study.direction == "maximize"

    def _load(self, arm: str) -> int:
        c = self.arms[arm]
        return c.counted + len(c.running)

    def ask(self, slot: int) -> Job | None:
        open_arms = [a for a in self.order if self._load(a) < self.arms[a].cfg.study.n_trials]
        for arm in sorted(open_arms, key=lambda a: (self._load(a), self.order.index(a))):
            job = self.arms[arm].ask(slot)
            if job is not None:
                return replace(job, study=arm, seed=self._rerun_seed(arm, job) if self.reruns else job.seed)
        return None

    def _rerun_seed(self, arm: str, job: Job) -> int:
        """The seed a queued re-run carries; a retry of one (queued again after a crash)
        gets its original's, which it then carries too."""
        c = self.arms[arm]
        trial = c.running[job.number].trial
        info = trial.user_attrs.get(RERUN)
        if info is None:
            origin = trial.user_attrs.get(studies.RETRY_OF)
            first = next((t for t in c.study.get_trials(deepcopy=False) if t.number == origin), None)
            info = None if first is None else first.user_attrs.get(RERUN)
            if info is None:  # never: re-run studies hold queued trials only
                return job.seed
            trial.set_user_attr(RERUN, info)
        return int(info["seed"])

    def report(self, number: int, step: int, metrics: dict, build: dict | None, arm: str):
        return self.arms[arm].report(number, step, metrics, build)

    def finish(self, number: int, outcome: Outcome, arm: str) -> None:
        self.arms[arm].finish(number, outcome)

    def worker_lost(self, slot: int, reason: str) -> dict:
        lost, finished = None, 0
        for arm, c in self.arms.items():
            r = c.worker_lost(slot, reason)
            if r["trial"] is not None:
                lost = f"{r['trial']} of arm {arm}"
            finished += r["finished"]
        return {"trial": lost, "finished": finished}

    def stop(self) -> None:
        for c in self.arms.values():
            c.stop()

    def progress(self) -> Progress:
        ps = [c.progress() for c in self.arms.values()]
        bests = [p.best for p in ps if p.best is not None]
        return Progress(target=sum(p.target for p in ps), counted=sum(p.counted for p in ps),
                        complete=sum(p.complete for p in ps), pruned=sum(p.pruned for p in ps),
                        failed=sum(p.failed for p in ps), retried=sum(p.retried for p in ps),
                        running=sum(p.running for p in ps),
                        best=(max(bests) if self.maximize else min(bests)) if bests else None,
                        stopping=any(p.stopping for p in ps))

    def close(self, interrupted: bool = False) -> dict:
        return {arm: c.close(interrupted) for arm, c in self.arms.items()}


# --- one MLflow writer process for every arm ----------------------------------------------------
class WriterHost:
    """Every arm's ``MlflowWriter`` (each with its own study run) in one actor process, so an
    experiment of eight arms imports MLflow (and torch, for the lr trajectories) once."""

    def __init__(self, uri: str, experiment: str, owner: studies.Owner):
        self.uri, self.experiment, self.owner = uri, experiment, owner
        self.writers: dict[str, Any] = {}

    def call(self, arm: str, name: str, *args: Any) -> Any:
        from optsearch.search.tracking import MlflowWriter

        if arm not in self.writers:
            self.writers[arm] = MlflowWriter(self.uri, self.experiment, self.owner)
        return getattr(self.writers[arm], name)(*args)


class WriterChannel:
    """An arm's handle on the ``WriterHost``: an actor with the writer's methods, so the
    arm's ``Tracker`` uses it as its writer. Writes are passed on in order, not waited for;
    ``close`` waits and returns the writer's result."""

    def __init__(self, host, arm: str):
        self.host, self.arm = host, arm

    def open(self, *args: Any) -> None:
        self.host.call.remote(self.arm, "open", *args)

    def apply(self, *args: Any) -> None:
        self.host.call.remote(self.arm, "apply", *args)

    def study_summary(self, *args: Any) -> None:
        self.host.call.remote(self.arm, "study_summary", *args)

    def close(self, status: str = "FINISHED") -> dict:
        return ray.get(self.host.call.remote(self.arm, "close", status))


# --- re-runs ---------------------------------------------------------------------------------
def top_configs(trials: list[FrozenTrial], k: int, maximize: bool) -> list[FrozenTrial]:
    """The ``k`` best complete trials (ties: the earlier trial first)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and t.value == t.value and abs(t.value) != float("inf")]
    return sorted(done, key=lambda t: ((-t.value if maximize else t.value), t.number))[:k]


def rerun_info(t: FrozenTrial, by_number: dict[int, FrozenTrial]) -> dict | None:
    """``{"of", "seed"}`` of a re-run trial, also for a retry queued after a crash."""
    info = t.user_attrs.get(RERUN)
    if info is None and studies.RETRY_OF in t.user_attrs:
        origin = by_number.get(t.user_attrs[studies.RETRY_OF])
        info = None if origin is None else origin.user_attrs.get(RERUN)
    return info


def queue_reruns(cfg: Config, top: list[FrozenTrial], seeds: tuple[int, ...]) -> int:
    """Queue each (config, seed) pair the re-run study lacks, seed by seed (a stopped phase
    has covered the configs evenly). Returns the study's total: trials that count plus
    queued ones, each of which will count once."""
    storage = studies.make_storage(cfg.study.storage)
    try:
        study = optuna.load_study(study_name=cfg.study.name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in trials}
        have, waiting = set(), 0
        for t in trials:
            waiting += t.state == TrialState.WAITING
            if t.state == TrialState.FAIL and t.user_attrs.get(studies.RETRIED):
                continue  # its retry stands for it
            info = rerun_info(t, by_number)
            if info is not None:
                have.add((info["of"], info["seed"]))
        for seed in seeds:
            for t in top:
                if (t.number, seed) not in have:
                    study.enqueue_trial(t.params, user_attrs={RERUN: {"of": t.number, "seed": seed}})
                    waiting += 1
        return studies.counted(study) + waiting
    finally:
        storage.engine.dispose()


# --- the driver --------------------------------------------------------------------------------
def _prepare(cfgs: dict[str, Config], allow_space_change: bool) -> dict[str, studies.Prepared]:
    """Claim every study (all or none)."""
    prepared: dict[str, studies.Prepared] = {}
    try:
        for arm, cfg in cfgs.items():
            prepared[arm] = studies.prepare(cfg, allow_space_change)
    except BaseException:
        _release(cfgs, prepared)
        raise
    return prepared


def _release(cfgs: dict[str, Config], prepared: dict[str, studies.Prepared]) -> None:
    for arm, p in prepared.items():
        studies.release_claim(cfgs[arm].study, p.owner)


def _stored(cfg: Config) -> list[FrozenTrial]:
    storage = studies.make_storage(cfg.study.storage)
    try:
        return optuna.load_study(study_name=cfg.study.name, storage=storage).get_trials(deepcopy=True)
    finally:
        storage.engine.dispose()


def _phase(exp: Experiment, cfgs: dict[str, Config], prepared: dict[str, studies.Prepared], workers: int | None,
           console: Console, poll: float, label: str, reruns: bool) -> tuple[dict, bool, int]:
    """Run the arms of ``cfgs`` with trials left to their totals on one set of workers.
    Returns (each arm's coordinator summary, interrupted, workers used)."""
    base = exp.base
    left = {arm: cfg.study.n_trials - prepared[arm].counted for arm, cfg in cfgs.items()}
    cfgs = {arm: cfg for arm, cfg in cfgs.items() if left[arm] > 0}
    total = sum(left[arm] for arm in cfgs)
    placement = plan(ray.cluster_resources(), workers or base.workers.count, base.workers.trials_per_gpu)
    n = min(placement.count, total)
    writers, host = {}, None
    if base.tracking.enabled:  # one writer process; each arm's Tracker writes through a channel to it
        owner = next(iter(prepared.values())).owner
        host = ray.remote(WriterHost).options(num_cpus=0, **_here()).remote(base.tracking.uri, base.experiment, owner)
        channel = ray.remote(WriterChannel).options(num_cpus=0, **_here())
        writers = {arm: channel.remote(host, arm) for arm in cfgs}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    names = {arm: f"{cfg.study.name} {stamp}" for arm, cfg in cfgs.items()}
    owners = {arm: prepared[arm].owner for arm in cfgs}
    coord = ray.remote(ArmsCoordinator).options(num_cpus=0, max_concurrency=1, **_here()).remote(
        cfgs, owners, writers, names, reruns)
    what = "seed re-runs" if reruns else "search trials"
    intro = (f"experiment [bold]{exp.name}[/]: {total} {what} to run for {len(cfgs)} arm(s) "
             f"({', '.join(f'{a} {left[a]}' for a in cfgs)}) on {n} {placement.kind} worker(s)")
    try:
        summaries, interrupted = work(base, coord, placement, n, total, console, poll, intro, label)
    finally:
        if host is not None:
            ray.kill(host)  # each Tracker has closed its writer (and killed its channel)
    return summaries, interrupted, n


def _short(exp: Experiment, summaries: dict, cfgs: dict[str, Config], summary: dict) -> bool:
    """Whether a phase ended with arms short of their totals (every worker died); says so."""
    short = []
    for arm, s in summaries.items():
        c = s.get("counts") or {}
        have = c.get("complete", 0) + c.get("pruned", 0) + c.get("failed", 0)
        if c and have < cfgs[arm].study.n_trials:
            short.append(f"{arm} {have} of {cfgs[arm].study.n_trials}")
    if short:
        summary["error"] = (f"experiment {exp.name!r}: every worker died and could not be replaced; trials that "
                            f"count: {', '.join(short)} (those that ran are kept; run the same command to continue)")
    return bool(short)


def run_experiment(exp: Experiment, workers: int | None = None, ray_address: str | None = None,
                   console: Console | None = None, poll: float = 0.25, allow_space_change: bool = False,
                   report_dir: str | Path | None = None) -> dict:
    """Run (or resume) the experiment to its end, then write the report. Returns a summary:
    ``{"experiment", "interrupted", "ran", "report": folder or None, "analysis", "tracking",
    "notes"}``. ``ConfigError`` on bad input (before anything is stored)."""
    from optsearch.search import verdict

    console = console or Console(stderr=True)
    base = exp.base
    check_tracking(base)
    summary: dict[str, Any] = {"experiment": exp.name, "interrupted": False, "ran": {}, "report": None,
                               "analysis": None, "tracking": None, "notes": [], "workers": 0}
    started = False
    tracked = None  # the experiment's MLflow parent run, opened when something runs
    status = "FAILED"

    def start() -> None:
        nonlocal started, tracked
        if not ray.is_initialized():
            started = init_ray(cluster.address_of(ray_address), ship=base.trainer.target is not None)
        if tracked is None and base.tracking.enabled:
            from optsearch.search.tracking import ExperimentRun

            name = f"{exp.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
            tags = {"optsearch.experiment": exp.name, "optsearch.role": "experiment",
                    "optsearch.storage": base.study.storage, "optsearch.config": exp.path}
            tracked = ExperimentRun(base.tracking.uri, base.experiment, name, tags,
                                    yaml.safe_dump(exp.raw, sort_keys=False))

    def run_phase(cfgs: dict[str, Config], prepared: dict, key: str, label: str, reruns: bool) -> bool:
        """Run one phase (the search, or the seed re-runs) when it has trials left; True
        when the experiment must stop here (interrupted, or arms short of their totals)."""
        nonlocal status
        if not any(cfg.study.n_trials > prepared[arm].counted for arm, cfg in cfgs.items()):
            return False
        start()
        summaries, interrupted, n = _phase(exp, cfgs, prepared, workers, console, poll, label, reruns)
        summary["ran"][key] = summaries
        summary["workers"] = max(summary["workers"], n)
        if tracked is not None:  # the arms' study runs nest under the experiment's
            tracked.adopt([s["tracking"]["parent_run_id"] for s in summaries.values()
                           if (s.get("tracking") or {}).get("parent_run_id")])
        if interrupted:
            summary["interrupted"] = True
            status = "KILLED"
            return True
        return _short(exp, summaries, cfgs, summary)

    try:
        # 1. The search: every arm to its n_trials, interleaved.
        prepared = _prepare(exp.arms, allow_space_change)
        try:
            for arm, p in prepared.items():
                for number in p.recovered:
                    console.print(f"arm {arm}: trial {number} was left running by a run that died: failed as "
                                  "interrupted, its params queued again")
            if run_phase(exp.arms, prepared, "search", "search", False):
                return summary
        finally:
            _release(exp.arms, prepared)

        # 2. The seed re-runs of each arm's top-k configs, the same seeds for every arm.
        maximize = base.study.direction == "maximize"
        rerun_cfgs: dict[str, Config] = {}
        tops: dict[str, list] = {}
        for arm, cfg in exp.arms.items():
            tops[arm] = top_configs(_stored(cfg), exp.verdict.top_k, maximize)
            if tops[arm]:
                rerun_cfgs[arm] = exp.rerun(arm, 1)
            else:
                summary["notes"].append(f"arm {arm}: no complete trial, so nothing to re-run")
        prepared = _prepare(rerun_cfgs, allow_space_change)
        try:
            for arm, p in prepared.items():
                target = queue_reruns(rerun_cfgs[arm], tops[arm], exp.verdict.seeds)
                rerun_cfgs[arm] = exp.rerun(arm, target)
                for number in p.recovered:
                    console.print(f"arm {arm}: re-run trial {number} was left running by a run that died: "
                                  "queued again")
            if run_phase(rerun_cfgs, prepared, "reruns", "re-runs", True):
                return summary
        finally:
            _release(rerun_cfgs, prepared)
        if started:
            ray.shutdown()
            started = False

        # 3. The report.
        folder = Path(report_dir) if report_dir is not None else Path.cwd() / f"report-{exp.name}"
        analysis = verdict.analyse_experiment(exp)
        verdict.write_report(analysis, folder)
        summary["analysis"], summary["report"] = analysis, str(folder)
        if tracked is not None:
            tracked.log_report(folder, verdict.headline_metrics(analysis))
        elif base.tracking.enabled:
            summary["notes"].append("nothing ran, so no MLflow run was opened; the report was written again "
                                    "from the stored trials")
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        summary["interrupted"] = True
        status = "KILLED"
        return summary
    finally:
        if started:
            ray.shutdown()
        if tracked is not None:
            summary["tracking"] = {**tracked.close(status), "uri": base.tracking.uri}


def resume_command(config: str, overrides: list[str]) -> str:
    import shlex

    return " ".join(["optsearch", "compare", shlex.quote(config)] + [f"--set {shlex.quote(o)}" for o in overrides])

