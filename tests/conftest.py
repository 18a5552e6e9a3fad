"""Shared fixtures: a real local Ray, real SQLite stores, the shared CIFAR-10 archive."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# A fresh local Ray for this session and the CLIs it starts, never a cluster that happens to be
# running on the machine (`ray start`, another test session): ray.init() would join that.
os.environ.setdefault("RAY_ADDRESS", "local")
# optsearch's cache (the empty MLflow store that new local stores copy): the session's own
os.environ.setdefault("OPTSEARCH_CACHE", tempfile.mkdtemp(prefix="optsearch-test-cache-"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray for the session (2 CPUs, as on CI)."""
    import ray

    from optsearch.search.run import start_local_ray

    start_local_ray(2)  # as the CLI starts its Ray: workers at normal priority
    yield ray
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh directory: default storages (optsearch.db, mlflow.db) land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def digits_config(tmp_path: Path, **study) -> dict:
    """A small digits study (seconds), as a config document."""
    doc = {
        "study": {"name": "t", "n_trials": 6, "sampler": {"name": "random", "seed": 1},
                  "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1}, **study},
        "trainer": {"name": "digits", "epochs": 4, "batch_size": 128},
        "space": {"optimizer": {"adamw": {"lr": {"low": 1e-5, "high": 1.0, "log": True}}},
                  "schedule": {"cosine": {"warmup_epochs": 1}}},
        "workers": {"count": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    doc["study"]["storage"] = f"sqlite:///{tmp_path}/optsearch.db"
    return doc


@pytest.fixture(scope="session")
def cifar_cache_dir(tmp_path_factory) -> Path:
    """Where this session's decoded CIFAR-10 lives (the shared folder is read-only)."""
    return tmp_path_factory.mktemp("cifar10-cache")


@pytest.fixture(scope="session")
def cifar(cifar_cache_dir):
    """The archive decoded once per session: (arrays, seconds the load took)."""
    import time

    from optsearch.trainers.data import load_cifar10

    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    start = time.perf_counter()
    arrays = load_cifar10(CIFAR_ARCHIVE, cache_dir=cifar_cache_dir)
    return arrays, time.perf_counter() - start
