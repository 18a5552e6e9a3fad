"""Ray actors that run trials: one per GPU (or a fraction of one), CPU actors otherwise.

Each actor (``TrialWorker``) supervises one trainer process of its own (a child process),
which builds the trainer once, so the data it loads stays resident for every trial it runs.
The actor pulls jobs from the coordinator, hands each to the trainer process, forwards its
reports and returns its outcome. The trainer process is where a trial can crash: a
segfault, ``os._exit``, running out of memory. The actor survives it, knows the exit code
or the signal, tells the coordinator (the trial is retried) and starts a new trainer
process. It also enforces ``study.trial_timeout``: a trial running longer fails and its
process is killed. If the actor itself dies (killed, node lost), the driver replaces it.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import ray

from optsearch.errors import ConfigError
from optsearch.search.protocol import Failure, Job, Outcome
from optsearch.search.trainer_process import return_freed_memory, serve  # noqa: F401 - re-exported


@dataclass(frozen=True)
class Placement:
    """How many worker actors, and what each asks Ray for."""

    count: int
    num_gpus: float
    num_cpus: float
    threads: int

    @property
    def kind(self) -> str:
        return "gpu" if self.num_gpus else "cpu"


def plan(resources: dict, count: int | str = "auto", trials_per_gpu: float = 1) -> Placement:
    """Workers for a cluster's resources.

    With GPUs: ``trials_per_gpu`` actors per GPU by default, each asking 1/trials_per_gpu GPU.
    Without: an actor asking ``num_gpus`` would wait forever, so CPU actors, one per two
    cores by default, the cores shared out among them.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = max(1.0, float(resources.get("CPU", 1)))
    if gpus > 0:
        n = max(1, math.floor(gpus * trials_per_gpu)) if count == "auto" else int(count)
        per_gpu = min(1.0, gpus / n)
        num_cpus = max(0.5, min(1.0, cpus / n))
        return Placement(n, per_gpu, num_cpus, max(1, int(cpus // n)))
    n = max(1, int(cpus // 2)) if count == "auto" else int(count)
    return Placement(n, 0.0, cpus / n, max(1, int(cpus // n)))


def describe_exit(code: int | None) -> str:
    """A process's exit status in words: ``killed by signal SIGSEGV (11)``, ``exited with code 3``."""
    if code is None:
        return "its exit status is unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or killed)" if -code == signal.SIGKILL else ""
        return f"killed by signal {name} ({-code}){hint}"
    return f"exited with code {code}"


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Keep a spawned child from running this process's main script.

    ``multiprocessing``'s spawn runs the parent's ``__main__`` file again in the child (as
    ``__mp_main__``) so that functions defined there can be unpickled. In a Ray actor that
    file is Ray's own worker script, whose imports cost every trainer process about 0.4 s
    of CPU before it starts, for nothing: the child runs ``trainer_process.serve``, found
    by its module's name, and loads trainers by module name too. Without the file the
    child leaves its main module alone (what spawn does for an interactive parent)."""
    main = sys.modules["__main__"]
    path = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path


def _route(job: Job) -> tuple:
    """The extra argument naming the job's study, for a coordinator serving several."""
    return () if job.study is None else (job.study,)


@dataclass
class _Child:
    proc: Any
    conn: Any
    ready: bool = False


class TrialWorker:
    """One Ray actor: the loop ask -> run in the trainer process -> finish."""

    def __init__(self, trainer_name: str | None, trainer_target: str | None, options: dict, threads: int,
                 sys_path: list[str] | None = None, trial_timeout: float | None = None,
                 return_memory: bool = False):
        self.trainer = (trainer_name, trainer_target, options)
        self.return_memory = return_memory
        self.threads = threads
        self.sys_path = list(sys_path or []) + [os.getcwd()]  # the job's shipped working directory, if any
        self.node = f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"
        self.trial_timeout = trial_timeout
        self.child: _Child | None = None
        self._spawn()  # imports and loads while the coordinator opens the study

    # --- the trainer process ------------------------------------------------------------
    def _spawn(self) -> None:
        mp = multiprocessing.get_context("spawn")
        parent_end, child_end = mp.Pipe()
        proc = mp.Process(target=serve, args=(child_end, self.trainer, self.threads, self.sys_path, os.getpid(),
                                             self.return_memory),
                          name="optsearch-trainer", daemon=False)  # a trainer may start processes of its own
        with _main_script_hidden():
            proc.start()
        child_end.close()
        self.child = _Child(proc, parent_end)

    def _ready(self) -> _Child:
        """The trainer process, started and loaded; ``ConfigError`` if the trainer cannot
        load, ``RuntimeError`` if the process died on the way."""
        if self.child is None:
            self._spawn()
        child = self.child
        if not child.ready:
            try:
                message = child.conn.recv()
            except (EOFError, OSError):
                message = None
            if message is None or message[0] != "ready":
                self._drop()
                if message is not None and message[0] == "fatal":
                    raise message[1]
                raise RuntimeError(f"the trainer's process died while starting: {describe_exit(child.proc.exitcode)}")
            child.ready = True
        return child

    def _drop(self, kill: bool = False) -> int | None:
        """Forget the trainer process (killing it first if asked); its exit code."""
        child, self.child = self.child, None
        if child is None:
            return None
        if kill and child.proc.is_alive():
            child.proc.kill()
        child.proc.join(timeout=10)
        child.conn.close()
        return child.proc.exitcode

    def info(self) -> dict:
        """The trainer process's pid and device."""
        child = self._ready()
        child.conn.send(("info",))
        return child.conn.recv()

    # --- trials -------------------------------------------------------------------------
    def run(self, coordinator, slot: int) -> int:
        """Run trials until the coordinator has none left; returns how many ran here."""
        ran = 0
        while (job := ray.get(coordinator.ask.remote(slot))) is not None:
            outcome, fatal = self._run(coordinator, job)
            outcome = replace(outcome, resources={**outcome.resources, "node": self.node})
            # Calls from one caller run in order: finish is recorded before the next ask.
            coordinator.finish.remote(job.number, outcome, *_route(job))
            ran += 1
            if fatal is not None:
                raise fatal
        self.close()
        return ran

    def _run(self, coordinator, job: Job) -> tuple[Outcome, ConfigError | None]:
        try:
            child = self._ready()
        except ConfigError as err:
            return Outcome.failed(Failure.TRAINER, str(err)), err
        except RuntimeError as err:
            return Outcome.failed(Failure.CRASH, str(err)), None
        started = time.monotonic()
        child.conn.send(("job", job))
        while True:
            left = None if self.trial_timeout is None else self.trial_timeout - (time.monotonic() - started)
            if left is not None and left <= 0:
                self._drop(kill=True)
                return Outcome.failed(Failure.TIMEOUT, f"ran past study.trial_timeout ({self.trial_timeout:g} s); "
                                                       "its process was stopped"), None
            try:
                message = child.conn.recv() if child.conn.poll(1.0 if left is None else min(1.0, left)) else ...
            except (EOFError, OSError):
                message = None
            if message is ...:
                if child.proc.is_alive():
                    continue
                message = None
            if message is None:  # the trainer process died mid-trial
                code = self._drop()
                return Outcome.failed(Failure.CRASH, f"the trainer's process died: {describe_exit(code)}"), None
            if message[0] == "report":
                # (step, metrics, build) from the trainer; the job's study for a coordinator of several
                child.conn.send(ray.get(coordinator.report.remote(job.number, *message[1:], *_route(job))))
            elif message[0] == "outcome":
                return message[1], message[2]

    def close(self) -> None:
        """Stop the trainer process."""
        if self.child is not None and self.child.proc.is_alive():
            try:
                self.child.conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            self.child.proc.join(timeout=10)
        self._drop(kill=True)
