"""The driver: start Ray, the coordinator and the workers, show progress, summarise."""

from __future__ import annotations

import os
import sys

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from optsearch.errors import ConfigError
from optsearch.search.config import Config
from optsearch.search.coordinator import Coordinator
from optsearch.search.workers import Placement, TrialWorker, plan


def init_ray(address: str | None = None) -> bool:
    """Join ``address``, or start a local Ray. Returns True when this call started it."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR")
    except (ConnectionError, ValueError, RuntimeError) as err:
        if address is None:
            raise
        raise ConfigError("--ray-address", address, f"cannot join the Ray cluster: {err}") from None
    return True


def _here() -> dict:
    """Pin an actor to this (the driver's) node: its SQLite paths are this machine's."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def _progress_line(p: dict) -> str:
    best = "-" if p["best"] is None else f"{p['best']:.4f}"
    return (f"[green]done {p['complete']}[/] [yellow]pruned {p['pruned']}[/] [red]failed {p['failed']}[/] "
            f"[cyan]running {p['running']}[/]  best {best}")


def run_study(cfg: Config, workers: int | None = None, ray_address: str | None = None,
              console: Console | None = None, poll: float = 0.25) -> dict:
    console = console or Console(stderr=True)
    started = init_ray(ray_address)
    try:
        return _run(cfg, workers, console, poll)
    finally:
        if started:
            ray.shutdown()


def _run(cfg: Config, workers: int | None, console: Console, poll: float) -> dict:
    placement: Placement = plan(ray.cluster_resources(), workers or cfg.workers.count, cfg.workers.trials_per_gpu)
    writer = None
    if cfg.tracking.enabled:  # MLflow's imports and store start beside the coordinator's
        from optsearch.search.tracking import writer_actor

        writer = writer_actor(cfg.tracking.uri, cfg.experiment, **_here())
    coord = ray.remote(Coordinator).options(num_cpus=0, max_concurrency=1, **_here()).remote(cfg, None, writer)
    # Workers import torch and load their trainer while the coordinator opens the study.
    actor = ray.remote(TrialWorker).options(num_cpus=placement.num_cpus, num_gpus=placement.num_gpus)
    actors = [actor.remote(cfg.trainer.name, cfg.trainer.target, cfg.trainer.options, placement.threads,
                           [os.getcwd()]) for _ in range(placement.count)]
    interrupted = False
    fatal: ConfigError | None = None
    summary: dict = {}
    n = 0
    try:
        progress = ray.get(coord.progress.remote())
        if progress["fatal"]:
            fatal = ConfigError(*progress["fatal"])
        elif progress["budget"] == 0:
            console.print(f"study {cfg.study.name!r} already has {progress['before']} of {cfg.study.n_trials} "
                          "trials; raise study.n_trials (--set study.n_trials=N) to run more")
        else:
            n = min(placement.count, progress["budget"])
            for a in actors[n:]:
                ray.kill(a)
            console.print(f"study [bold]{cfg.study.name}[/]: {progress['before']} trials stored, running "
                          f"{progress['budget']} more on {n} {placement.kind} worker(s)")
            fatal = _drive(coord, actors[:n], console, poll, progress["budget"])
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: stopping; finished trials are kept[/]")
    finally:
        for a in actors:
            ray.kill(a)
        try:
            summary = ray.get(coord.close.remote(interrupted))
        except KeyboardInterrupt:
            interrupted = True
        except ray.exceptions.RayError as err:
            console.print(f"[red]closing the study failed: {err}[/]")
        if summary.get("fatal") and writer is not None:
            ray.kill(writer)  # the study never opened: no MLflow run was started
    if fatal is not None:
        raise fatal
    summary["interrupted"] = interrupted
    summary["workers"] = {"count": n, "kind": placement.kind}
    return summary


def _drive(coord, actors: list, console: Console, poll: float, budget: int) -> ConfigError | None:
    """Run the workers to the end with a live progress bar; returns a trainer's bad-input error."""
    pending = {a.run.remote(coord, i): i for i, a in enumerate(actors)}
    fatal = None
    columns = (TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=budget)
        while pending:
            ready, _ = ray.wait(list(pending), timeout=poll)
            for ref in ready:
                worker = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, ConfigError):  # bad trainer input: the study stops, exit 2
                        fatal = fatal or cause
                        continue
                    reason = (f"{type(cause).__name__}: {cause}" if cause is not None
                              else (str(err).strip().splitlines() or ["actor died"])[-1])[:500]
                    ray.get(coord.worker_lost.remote(worker, reason))
                    console.print(f"[red]worker {worker} lost[/]: {reason}")
            p = ray.get(coord.progress.remote())
            bar.update(task, completed=p["complete"] + p["pruned"] + p["failed"], description=_progress_line(p))
    return fatal


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
    c = summary["counts"]
    table = Table(title=f"study {summary['study']}", show_header=True)
    for col in ("trials", "complete", "pruned", "failed", "best value", "best trial"):
        table.add_column(col, justify="right")
    best = summary.get("best")
    table.add_row(str(sum(c.values())), str(c["complete"]), str(c["pruned"]), str(c["failed"]),
                  "-" if not best else f"{best['value']:.4f}", "-" if not best else str(best["number"]))
    console.print(table)
    if best:
        params = Table(title="best params", show_header=False)
        params.add_column("key")
        params.add_column("value")
        from optsearch.search.tracking import flatten

        for k, v in flatten(best["params"]).items():
            params.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        console.print(params)
    for e in summary.get("errors") or []:
        console.print(f"[red]{e.splitlines()[0]}[/]")
    t = summary.get("tracking")
    if t and t.get("experiment_id"):
        from optsearch.search.tracking import ui_link

        console.print(f"MLflow UI: mlflow ui --backend-store-uri {t['uri']}", soft_wrap=True)
        console.print(f"  then open {ui_link(t['experiment_id'])}", soft_wrap=True)
        for e in t.get("errors") or []:
            console.print(f"[red]tracking: {e}[/]")
    console.print(f"best config as code: optsearch export {summary['study']} --storage {summary['storage']}",
                  soft_wrap=True)
    sys.stdout.flush()
