"""The driver: check and claim the study, start Ray, the coordinator and the workers, keep
workers alive, show progress, summarise.

Everything a user can get wrong is checked before Ray starts (the config, the storage, the
stored study, the tracking store, the Ray address), so it is a one-line error within
seconds. While the study runs, a worker actor that dies is replaced (its trial is retried);
one that keeps dying before running a trial is given up; when every worker is given up,
the study stops and says how far it got.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections import Counter

import ray
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from optsearch.errors import ConfigError, StudyError
from optsearch.search import study as studies
from optsearch.search import cluster, urls
from optsearch.search.config import Config
from optsearch.search.coordinator import Coordinator
from optsearch.search.workers import Placement, TrialWorker, plan

GIVE_UP_AFTER = 3  # a worker slot whose actor dies this many times in a row without finishing a trial


def check_tracking(cfg: Config) -> None:
    """A local MLflow store must be writable: else one line now, not minutes of retries."""
    path = urls.sqlite_path(cfg.tracking.uri) if cfg.tracking.enabled else None
    if path is None:
        return
    try:
        if path.exists():
            with open(path, "r+b"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".optsearch-write-test-"):
                pass
    except OSError as err:
        raise ConfigError("tracking.uri", cfg.tracking.uri, f"cannot write the MLflow store there: "
                                                            f"{err.strerror or err}") from None


# Ray starts its worker processes at niceness 15 by default (``RAY_worker_niceness``), below
# everything else on the machine: there trials starve beside any busy process. A quickstart
# beside two busy processes on 2 cores finished no trial in 120 s; at 0 it runs at its share.
LOCAL_RAY_ENV = {"RAY_worker_niceness": "0"}


def local_ray_defaults() -> None:
    """What a local Ray that optsearch starts runs with (a setting the user made wins); read
    by the processes ``ray.init`` starts. A cluster joined keeps its own."""
    for var, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(var, value)


def start_local_ray(num_cpus: int) -> None:
    """A fresh local Ray of ``num_cpus`` as optsearch's own start makes it (workers at normal
    priority, quiet), for the test session and the benches, which size it themselves."""
    local_ray_defaults()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)


def init_ray(address: str | None = None, ship: bool = False) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``, as Ray's own tools read it), or start a local
    Ray. ``ship``: send the working directory to the cluster's nodes (Ray's ``runtime_env``
    ``working_dir``), so a ``target:`` trainer imports there without a shared filesystem.
    Returns True when this call started Ray."""
    if ray.is_initialized():
        return False
    cluster.join_check(address)
    remote = address not in (None, "", "local")  # "local": a new local Ray, as with no address
    runtime_env = {"working_dir": os.getcwd(), "excludes": cluster.SHIP_EXCLUDES} if ship and remote else None
    local_ray_defaults()
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", runtime_env=runtime_env)
    except (ConnectionError, ValueError, RuntimeError) as err:
        if address is None:
            raise
        message = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        what = "ship the working directory to" if runtime_env and "working_dir" in message else "join"
        raise ConfigError("--ray-address", address, f"cannot {what} the Ray cluster: {message}") from None
    return True


def ray_shipped() -> bool:
    """Whether this job ships its working directory to the cluster."""
    return bool((ray.get_runtime_context().runtime_env or {}).get("working_dir"))


def _here() -> dict:
    """Pin an actor to this (the driver's) node: its SQLite paths are this machine's."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def run_study(cfg: Config, workers: int | None = None, ray_address: str | None = None,
              console: Console | None = None, poll: float = 0.25, allow_space_change: bool = False) -> dict:
    """Run (or resume) the study to its ``n_trials``. Returns the summary; ``ConfigError``
    on bad input (before anything is stored)."""
    console = console or Console(stderr=True)
    ray_address = cluster.address_of(ray_address)
    check_tracking(cfg)
    prepared = studies.prepare(cfg, allow_space_change)
    try:
        for number in prepared.recovered:
            console.print(f"trial {number} was left running by a run that died: failed as interrupted, "
                          "its params queued again")
        if prepared.counted >= cfg.study.n_trials:
            console.print(f"study {cfg.study.name!r} already has {prepared.counted} of {cfg.study.n_trials} "
                          "trials; raise study.n_trials (--set study.n_trials=N) to run more")
            return stored_summary(cfg)
        started = init_ray(ray_address, ship=cfg.trainer.target is not None)
        try:
            return _run(cfg, prepared, workers, console, poll)
        finally:
            if started:
                ray.shutdown()
    finally:
        studies.release_claim(cfg.study, prepared.owner)


def stored_summary(cfg: Config) -> dict:
    """The summary of a stored study, when this run has nothing to do."""
    import optuna

    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    best = next(iter(study.best_trials), None) if study.get_trials(deepcopy=False) else None
    return {"study": cfg.study.name, "storage": cfg.study.storage, "target": cfg.study.n_trials,
            "counts": studies.counts(study), "this_run": {}, "notes": [], "errors": [],
            "best": None if best is None else {"number": best.number, "value": best.value,
                                                "params": best.user_attrs.get("params", best.params)}}


def _run(cfg: Config, prepared: studies.Prepared, workers: int | None, console: Console, poll: float) -> dict:
    placement: Placement = plan(ray.cluster_resources(), workers or cfg.workers.count, cfg.workers.trials_per_gpu)
    left = cfg.study.n_trials - prepared.counted
    n = min(placement.count, left)
    writer = None
    if cfg.tracking.enabled:  # MLflow's imports and store start beside the coordinator's
        from optsearch.search.tracking import writer_actor

        writer = writer_actor(cfg.tracking.uri, cfg.experiment, prepared.owner, **_here())
    coord = ray.remote(Coordinator).options(num_cpus=0, max_concurrency=1, **_here()).remote(
        cfg, prepared.owner, writer, None, prepared.owner.beat)  # the parent run starts with the invocation
    intro = (f"study [bold]{cfg.study.name}[/]: {prepared.counted} of {cfg.study.n_trials} trials stored, "
             f"running {left} more on {n} {placement.kind} worker(s)")
    summary, interrupted = work(cfg, coord, placement, n, left, console, poll, intro)
    summary["interrupted"] = interrupted
    summary["workers"] = {"count": n, "kind": placement.kind}
    return summary


class CtrlC:
    """The driver's SIGINT handler while a run works: the first Ctrl-C asks for a graceful
    stop, which the driver's loop acts on at its next poll (``check``); a second leaves at
    once (``KeyboardInterrupt``). The first raises nothing where it lands, so it does not
    depend on the code it interrupts: in fresh-clone runs of the test suite a study went on
    to its end after a Ctrl-C (cause not found; Ray's ``wait``/``get`` alone did not lose
    one in 150 tries). Installed from the main thread only (elsewhere Python has no
    handlers)."""

    def __init__(self) -> None:
        self.pressed = 0
        self._previous = None

    def __call__(self, signum, frame) -> None:  # noqa: ANN001
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def work(cfg: Config, coord, placement: Placement, n: int, left: int, console: Console, poll: float,
         intro: str, label: str = "trials") -> tuple[dict, bool]:
    """Start ``n`` workers on ``coord`` (a coordinator actor: ``Coordinator``, or one serving
    several studies), drive them until it has no more trials, then close it. Returns
    ``(coord.close()'s summary, interrupted)``; raises a trainer's bad-input ``ConfigError``,
    or ``StudyError`` when the coordinator dies."""
    actor = ray.remote(TrialWorker).options(num_cpus=placement.num_cpus, num_gpus=placement.num_gpus,
                                            scheduling_strategy="SPREAD")  # over the cluster's nodes
    # On a local Ray, workers import a target trainer from the driver's folder; on a cluster
    # it was shipped with the job (runtime_env), and they import from their own copy.
    sys_path = [] if ray_shipped() else [os.getcwd()]

    def spawn():  # workers import and load their trainer while the coordinator opens the study
        return actor.remote(cfg.trainer.name, cfg.trainer.target, cfg.trainer.options, placement.threads,
                            sys_path, cfg.study.trial_timeout, cfg.workers.return_freed_memory)

    slots = [spawn() for _ in range(n)]
    interrupted = False
    fatal: ConfigError | None = None
    summary: dict = {}
    lost_coordinator = None
    with CtrlC() as ctrl_c:
        try:
            console.print(intro)
            fatal = _drive(coord, slots, spawn, console, poll, left, placement, label, ctrl_c)
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]interrupted: stopping; finished trials are kept, running ones run again at "
                          "the next start[/]")
        except ray.exceptions.RayActorError as err:  # the coordinator itself died
            lost_coordinator = err
        finally:
            for a in slots:
                if a is not None:
                    ray.kill(a)
            try:
                summary = ray.get(coord.close.remote(interrupted))
            except KeyboardInterrupt:  # a second Ctrl-C: leave now; the next start recovers the rest
                interrupted = True
            except ray.exceptions.RayError as err:
                lost_coordinator = lost_coordinator or err
            ray.kill(coord)
    if fatal is not None:
        raise fatal
    if lost_coordinator is not None:
        first = str(lost_coordinator).strip().splitlines()[0][:200]
        raise StudyError(f"study {cfg.study.name!r}: its coordinator died ({first}); the trials that finished are "
                         f"stored in {cfg.study.storage}: run the same command to continue")
    return summary, interrupted


def _death(err: Exception) -> str:
    """Why a worker actor died, from Ray's error (Ray does not give the exit code)."""
    text = str(err)
    detail = text.split("Worker exit detail:", 1)[1].strip().split(". ")[0] if "Worker exit detail:" in text else ""
    pid = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.strip().startswith("pid:")), "?")
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"its actor (pid {pid}) raised {type(cause).__name__}: {str(cause)[:300]}"
    return f"its actor (pid {pid}) died" + (f": {detail}" if detail else " (killed, or its node was lost)")


def _room(placement: Placement) -> bool:
    """Whether the cluster has the resources for one more worker now (a lost node's are gone)."""
    free = ray.available_resources()
    return free.get("CPU", 0) >= placement.num_cpus and free.get("GPU", 0) >= placement.num_gpus


def _drive(coord, slots: list, spawn, console: Console, poll: float, left: int,
           placement: Placement, label: str, ctrl_c: CtrlC) -> ConfigError | None:
    """Run the workers to the end with a live progress bar, replacing dead ones. Returns a
    trainer's bad-input error (the study stops)."""
    # The bar takes the whole width; the counts go on a line of their own below it.
    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(bar_width=None), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, expand=True)
    task = bar.add_task("", total=left)
    try:
        return _watch(coord, slots, spawn, console, poll, placement, bar, task, ctrl_c)
    finally:
        if not console.is_terminal:
            console.line()  # a terminal's live display ends its line itself; a pipe's does not


def _watch(coord, slots, spawn, console, poll, placement, bar, task, ctrl_c: CtrlC) -> ConfigError | None:
    pending = {a.run.remote(coord, i): i for i, a in enumerate(slots)}
    deaths_in_row: Counter = Counter()  # per worker slot, since it last finished a trial
    fatal = None
    with Live(Group(bar, Text("")), console=console, refresh_per_second=4) as live:
        while pending:
            ctrl_c.check()
            ready, _ = ray.wait(list(pending), timeout=poll)
            for ref in ready:
                slot = pending.pop(ref)
                try:
                    ray.get(ref)
                    slots[slot] = None  # done: no more jobs
                    continue
                except ray.exceptions.RayError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, ConfigError):  # bad trainer input: the study stops, exit 2
                        fatal = fatal or cause
                        ray.get(coord.stop.remote())
                        continue
                    reason = _death(err)
                lost = ray.get(coord.worker_lost.remote(slot, reason))
                ray.kill(slots[slot])
                deaths_in_row[slot] = 0 if lost["finished"] else deaths_in_row[slot] + 1
                what = f"trial {lost['trial']} runs again" if lost["trial"] is not None else "it ran no trial"
                if fatal is not None or deaths_in_row[slot] >= GIVE_UP_AFTER:
                    slots[slot] = None
                    console.print(f"[red]worker {slot} lost[/] ({reason}); {what}; "
                                  + ("not replaced" if fatal else
                                     f"it died {GIVE_UP_AFTER} times without finishing a trial: given up"))
                    continue
                if not _room(placement):
                    slots[slot] = None
                    console.print(f"[red]worker {slot} lost[/] ({reason}); {what}; no room left on the cluster "
                                  "for a new one")
                    continue
                console.print(f"[yellow]worker {slot} lost[/] ({reason}); {what}; a new worker takes its place")
                slots[slot] = spawn()
                pending[slots[slot].run.remote(coord, slot)] = slot
            p = ray.get(coord.progress.remote())
            bar.update(task, completed=p.complete + p.pruned + p.failed)
            live.update(Group(bar, Text.from_markup(_progress_line(p))))
            ctrl_c.check()
            if p.left == 0 and p.running == 0:
                break  # all done; a replacement still waiting for room on the cluster is not needed
    return fatal


def _progress_line(p) -> str:
    best = "-" if p.best is None else f"{p.best:.4f}"
    retried = f"  [magenta]retried {p.retried}[/]" if p.retried else ""
    return (f"[green]complete {p.complete}[/]  [yellow]pruned {p.pruned}[/]  [red]failed {p.failed}[/]{retried}  "
            f"[cyan]running {p.running}[/]  best {best}")


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
    c = summary["counts"]
    table = Table(title=f"study {summary['study']}", show_header=True)
    for col in ("trials", "complete", "pruned", "failed", "retried", "best value", "best trial"):
        table.add_column(col, justify="right")
    best = summary.get("best")
    table.add_row(f"{c['complete'] + c['pruned'] + c['failed']} of {summary['target']}", str(c["complete"]),
                  str(c["pruned"]), str(c["failed"]), str(c.get("retried", 0)),
                  "-" if not best else f"{best['value']:.4f}", "-" if not best else str(best["number"]))
    console.print(table)
    console.print("failed: the trial's own doing (counted); retried: cut short by a crash, a lost worker or an "
                  "interruption, and run again (not counted)", style="dim")
    if best:
        params = Table(title=f"best params (trial {best['number']})", show_header=True)
        params.add_column("param")
        params.add_column("value", justify="right")
        params.add_column("searched as (Optuna)")
        from optsearch.search.tracking import flatten, param_text

        searched = best.get("searched") or {}
        for k, v in flatten(best["params"]).items():
            params.add_row(k, param_text(v), searched.get(k, ""), style=None if k in searched else "dim")
        console.print(params)
        console.print("dim rows were fixed, not searched", style="dim")
    for note in summary.get("notes") or []:
        console.print(f"[yellow]{note}[/]", soft_wrap=True)
    for e in summary.get("errors") or []:
        console.print(f"[red]{e.splitlines()[0]}[/]")
    t = summary.get("tracking")
    if t:
        for e in t.get("errors") or []:
            console.print(f"[red]tracking: {e}[/]")
        if t.get("unwritten"):
            console.print(f"[red]MLflow: {t['unwritten']} write(s) could not be made; the study's records in "
                          f"{summary['storage']} are complete[/]")
        if t.get("recovered"):
            console.print(f"MLflow: closed {len(t['recovered'])} run(s) a crashed run had left RUNNING")
        if t.get("backfilled"):
            console.print(f"MLflow: logged {t['backfilled']} finished trial(s) that had no run (from {summary['storage']})")
        if t.get("experiment_id"):
            from optsearch.search.tracking import ui_link

            console.print(f"MLflow UI: mlflow ui --backend-store-uri {t['uri']}", soft_wrap=True)
            console.print(f"  then open {ui_link(t['experiment_id'])}", soft_wrap=True)
    console.print(f"best config as code: optsearch export {summary['study']} --storage {summary['storage']}",
                  soft_wrap=True)
    sys.stdout.flush()


def unfinished(summary: dict) -> str | None:
    """Why a run ended before the study's n_trials, when it did (not by Ctrl-C)."""
    c = summary.get("counts") or {}
    have = c.get("complete", 0) + c.get("pruned", 0) + c.get("failed", 0)
    if summary.get("interrupted") or not c or have >= summary.get("target", 0):
        return None
    return (f"study {summary['study']!r}: every worker died and could not be replaced; {have} of "
            f"{summary['target']} trials count (those that ran are kept; run the same command to continue)")

