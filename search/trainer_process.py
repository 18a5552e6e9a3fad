"""The trainer process: the child a ``TrialWorker`` starts and supervises (``serve``).

Kept apart from ``workers`` so that starting one imports neither Ray nor the actor's code:
``multiprocessing``'s spawn imports this module in a fresh interpreter, and what it imports
is what each (re)start of a trainer process costs before the trainer itself loads.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from optsearch.errors import ConfigError, PointRejected
from optsearch.search.protocol import Answer, Failure, Job, Outcome


def _floats(metrics: dict) -> dict[str, float]:
    """Final metrics as floats: numpy and 0-d torch scalars too; non-numbers are dropped."""
    out = {}
    for k, v in (metrics or {}).items():
        try:
            out[k] = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


# --- the trainer process -------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """End this process when the actor that started it goes (Linux: at once; else polled)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="optsearch-orphan-watch").start()


MALLOC_THRESHOLD = 64 * 1024  # bytes; see return_freed_memory


def return_freed_memory() -> bool:
    """Have glibc's malloc give freed blocks of 64 KiB and more back to the system at once.

    By default glibc raises its mmap threshold as large blocks are freed (up to 32 MiB), so a
    training step's activations come from the heap afterwards and the heap keeps them when
    they are freed: a CPU trial's peak grows by what the evaluation allocates on top of it.
    A fixed threshold (and trim threshold) of 64 KiB returns them, but every large tensor is
    then mapped (and its pages faulted in) afresh: BENCHMARKS.md section 5 measured a CIFAR-10
    CPU worker's peak at 1483 MB instead of 1646 MB, and its training 1.39x slower. So it is
    opt-in, ``workers.return_freed_memory: true``, for machines short of memory. Leaves alone settings the user made with glibc's
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``; a no-op without glibc.
    Returns whether it changed anything."""
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, MALLOC_THRESHOLD)) and bool(
            libc.mallopt(m_trim_threshold, MALLOC_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False


def serve(conn, trainer: tuple, threads: int, sys_path: list[str], parent: int, return_memory: bool = False) -> None:
    """The trainer process: load the trainer once, then run the jobs ``conn`` sends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C for the whole study
    if return_memory:  # workers.return_freed_memory
        return_freed_memory()
    _die_with_parent(parent)
    for p in reversed(sys_path):  # the driver's cwd: `target: mymodule:fit` imports here too
        if p not in sys.path:
            sys.path.insert(0, p)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # read by torch when it loads
        os.environ[var] = str(threads)
    # OpenMP threads that wait for each other by spinning stall when another process holds
    # one of their cores: a digits study on 2 busy cores finished no trial in 40 s, where
    # with passive waiting it finished 13 in 33 s. On idle cores passive waiting cost a
    # digits trial 0.60 s against 0.50 s (BENCHMARKS.md section 1). A user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from optsearch.trainers.base import TrialContext, TrialFailed, seed_everything
    from optsearch.trainers.registry import load_trainer

    try:
        fit = load_trainer(*trainer).fit
    except ConfigError as err:
        conn.send(("fatal", err))
        return
    except BaseException as err:  # noqa: BLE001 - the user's module raised at import
        conn.send(("fatal", ConfigError("trainer", trainer[0] or trainer[1], f"cannot load: {type(err).__name__}: {err}")))
        return
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "info":
            ctx = TrialContext(0, 0)
            conn.send({"pid": os.getpid(), "device": str(ctx.device)})
            continue
        if message[0] != "job":
            return
        job: Job = message[1]

        def reporter(step: int, metrics: dict) -> Answer:
            conn.send(("report", step, metrics, None if ctx.built is None else vars(ctx.built)))
            return conn.recv()

        ctx = TrialContext(job.number, job.seed, options=trainer[2], reporter=reporter)
        seed_everything(job.seed)
        cuda = "torch" in sys.modules and sys.modules["torch"].cuda.is_available()
        if cuda:
            sys.modules["torch"].cuda.reset_peak_memory_stats()
        fatal = None
        try:
            metrics = fit(job.params, ctx)
            outcome = Outcome(TrialState.COMPLETE, _floats(metrics))
        except optuna.TrialPruned:
            outcome = Outcome(TrialState.PRUNED)
        except TrialFailed as err:  # the coordinator said so (a non-finite metric)
            outcome = Outcome.failed(err.failure, err.reason)
        except PointRejected as err:  # the sampled point, not the config: this trial fails
            outcome = Outcome.failed(Failure.REJECTED, str(err))
        except ConfigError as err:  # bad input the user wrote (data root, options): stop the study
            outcome, fatal = Outcome.failed(Failure.TRAINER, str(err)), err
        except Exception as err:  # noqa: BLE001 - the trainer's own failure
            outcome = Outcome.failed(Failure.TRAINER, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}")
        build = None if ctx.built is None else vars(ctx.built)
        resources = {"device": str(ctx._device) if ctx._device is not None else "cpu"}
        if cuda:
            resources["peak_gpu_mb"] = sys.modules["torch"].cuda.max_memory_allocated() / 2**20
        conn.send(("outcome", replace(outcome, build=build, resources=resources), fatal))
