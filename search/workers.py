"""Ray actors that run trials: one per GPU (or a fraction of one), CPU actors otherwise.

An actor builds its trainer once, so the data it loads stays resident for every trial it
runs. It pulls jobs from the coordinator until none is left.
"""

from __future__ import annotations

import math
import os
import traceback
from dataclasses import dataclass

import optuna
import ray

from optsearch.errors import ConfigError, PointRejected


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


def _floats(metrics: dict) -> dict[str, float]:
    """Final metrics as floats: numpy and 0-d torch scalars too; non-numbers are dropped."""
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


class TrialWorker:
    """One Ray actor: a trainer and the loop ask -> fit -> finish."""

    def __init__(self, trainer_name: str | None, trainer_target: str | None, options: dict, threads: int,
                 sys_path: list[str] | None = None):
        import sys

        for p in reversed(sys_path or []):  # the driver's cwd: `target: mymodule:fit` imports here too
            if p not in sys.path:
                sys.path.insert(0, p)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # read by torch when it loads
            os.environ[var] = str(threads)
        from optsearch.trainers.registry import load_trainer

        self.threads = threads
        self.options = options
        self.trainer = load_trainer(trainer_name, trainer_target, options)
        self.pid = os.getpid()

    def trial_device(self):
        """The trials' device (loads torch if the trainer has not)."""
        import torch

        from optsearch.trainers.base import default_device

        torch.set_num_threads(self.threads)
        return default_device()

    def info(self) -> dict:
        return {"pid": self.pid, "device": str(self.trial_device())}

    def run(self, coordinator, worker: int) -> int:
        """Run trials until the coordinator has none left; returns how many ran here."""
        from optsearch.trainers.base import TrialContext, seed_everything

        ran = 0
        job = ray.get(coordinator.ask.remote(worker))
        while job is not None:
            number = job["number"]

            def reporter(step: int, metrics: dict, number: int = number) -> bool:
                return ray.get(coordinator.report.remote(number, step, metrics))

            import sys

            # A trainer that never loads torch (a pure-Python objective) gets a lazy device.
            device = self.trial_device() if "torch" in sys.modules else None
            ctx = TrialContext(number, job["seed"], device, options=self.options, reporter=reporter)
            seed_everything(job["seed"])
            state, metrics, error = "complete", {}, None
            try:
                metrics = self.trainer.fit(job["params"], ctx)
            except optuna.TrialPruned:
                state = "pruned"
            except PointRejected as err:  # the sampled point, not the config: this trial fails
                state, error = "failed", str(err)
            except ConfigError as err:  # bad input the user wrote (data root, options): stop the study
                coordinator.finish.remote(number, "failed", {}, None, str(err))
                coordinator.stop.remote()
                raise
            except Exception as err:
                state = "failed"
                error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"
            budget = None if ctx.budget is None else vars(ctx.budget)
            clean = _floats(metrics or {})
            # Calls from one caller run in order: finish is recorded before the next ask.
            coordinator.finish.remote(number, state, clean, budget, error)
            ran += 1
            job = ray.get(coordinator.ask.remote(worker))
        return ran
