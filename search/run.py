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
import socket
import sys
import tempfile
from collections import Counter

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from optsearch.errors import ConfigError
from optsearch.search import study as studies
from optsearch.search import urls
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


def check_ray_address(address: str | None) -> None:
    """Something answers at a Ray address (a dead one would hang ``ray.init`` for minutes)."""
    if address in (None, "", "auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--ray-address", address, "must look like HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ConfigError("--ray-address", address, f"nothing answers there: {err.strerror or err}") from None


def init_ray(address: str | None = None) -> bool:
    """Join ``address``, or start a local Ray. Returns True when this call started it."""
    if ray.is_initialized():
        return False
    check_ray_address(address)
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR")
    except (ConnectionError, ValueError, RuntimeError) as err:
        if address is None:
            raise
        message = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ConfigError("--ray-address", address, f"cannot join the Ray cluster: {message}") from None
    return True


def _here() -> dict:
    """Pin an actor to this (the driver's) node: its SQLite paths are this machine's."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def run_study(cfg: Config, workers: int | None = None, ray_address: str | None = None,
              console: Console | None = None, poll: float = 0.25, allow_space_change: bool = False) -> dict:
    """Run (or resume) the study to its ``n_trials``. Returns the summary; ``ConfigError``
    on bad input (before anything is stored)."""
    console = console or Console(stderr=True)
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
        started = init_ray(ray_address)
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
        cfg, prepared.owner, writer)
    intro = (f"study [bold]{cfg.study.name}[/]: {prepared.counted} of {cfg.study.n_trials} trials stored, "
             f"running {left} more on {n} {placement.kind} worker(s)")
    summary, interrupted = work(cfg, coord, placement, n, left, console, poll, intro)
    summary["interrupted"] = interrupted
    summary["workers"] = {"count": n, "kind": placement.kind}
    return summary


def work(cfg: Config, coord, placement: Placement, n: int, left: int, console: Console, poll: float,
         intro: str, label: str = "trials") -> tuple[dict, bool]:
    """Start ``n`` workers on ``coord`` (a coordinator actor: ``Coordinator``, or one serving
    several studies), drive them until it has no more trials, then close it. Returns
    ``(coord.close()'s summary, interrupted)``; raises a trainer's bad-input ``ConfigError``."""
    actor = ray.remote(TrialWorker).options(num_cpus=placement.num_cpus, num_gpus=placement.num_gpus)

    def spawn():  # workers import and load their trainer while the coordinator opens the study
        return actor.remote(cfg.trainer.name, cfg.trainer.target, cfg.trainer.options, placement.threads,
                            [os.getcwd()], cfg.study.trial_timeout)

    slots = [spawn() for _ in range(n)]
    interrupted = False
    fatal: ConfigError | None = None
    summary: dict = {}
    try:
        console.print(intro)
        fatal = _drive(coord, slots, spawn, console, poll, left, label)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: stopping; finished trials are kept, running ones run again at the "
                      "next start[/]")
    finally:
        for a in slots:
            if a is not None:
                ray.kill(a)
        try:
            summary = ray.get(coord.close.remote(interrupted))
        except KeyboardInterrupt:  # a second Ctrl-C: leave now; the next start recovers the rest
            interrupted = True
        except ray.exceptions.RayError as err:
            console.print(f"[red]closing the study failed: {err}[/]")
        ray.kill(coord)
    if fatal is not None:
        raise fatal
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


def _drive(coord, slots: list, spawn, console: Console, poll: float, left: int,
           label: str = "trials") -> ConfigError | None:
    """Run the workers to the end with a live progress bar, replacing dead ones. Returns a
    trainer's bad-input error (the study stops)."""
    pending = {a.run.remote(coord, i): i for i, a in enumerate(slots)}
    deaths_in_row: Counter = Counter()
    fatal = None
    columns = (TextColumn(f"[bold]{label}"), BarColumn(bar_width=None, table_column=Column(ratio=1)),
               MofNCompleteColumn(table_column=Column(no_wrap=True)),  # in 80 columns the bar gives way, not the counts
               TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")),
               TimeElapsedColumn())
    with Progress(*columns, console=console, expand=True) as bar:
        task = bar.add_task("", total=left)
        while pending:
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
                console.print(f"[yellow]worker {slot} lost[/] ({reason}); {what}; a new worker takes its place")
                slots[slot] = spawn()
                pending[slots[slot].run.remote(coord, slot)] = slot
            p = ray.get(coord.progress.remote())
            bar.update(task, completed=p.complete + p.pruned + p.failed, description=_progress_line(p))
    return fatal


def _progress_line(p) -> str:
    best = "-" if p.best is None else f"{p.best:.4g}"
    retried = f" [magenta]retried {p.retried}[/]" if p.retried else ""
    return (f"[green]complete {p.complete}[/] [yellow]pruned {p.pruned}[/] [red]failed {p.failed}[/]{retried} "
            f"[cyan]running {p.running}[/] best {best}")


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
        params = Table(title="best params", show_header=False)
        params.add_column("key")
        params.add_column("value")
        from optsearch.search.tracking import flatten

        for k, v in flatten(best["params"]).items():
            params.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        console.print(params)
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

