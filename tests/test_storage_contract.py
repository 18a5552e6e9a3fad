"""Optuna's own storage contract suite, run against every storage the project uses.

``optuna.testing.pytest_storages.StorageTestCase`` is the suite Optuna runs against its
built-in storages; passing it means a sampler, pruner or ``optuna.Study`` cannot tell our
storages from Optuna's.
"""

from __future__ import annotations

import pytest
from optuna.testing.pytest_storages import StorageTestCase

from optsearch.search.storage import MirroredStorage
from optsearch.search.study import make_storage


@pytest.fixture(params=["mirrored", "rdb"])
def storage(request, tmp_path):
    """A fresh storage over a fresh SQLite file: the coordinator's mirror, or plain RDB."""
    backend = make_storage(f"sqlite:///{tmp_path / 'contract.db'}")
    if request.param == "rdb":
        yield backend
    else:
        mirrored = MirroredStorage(backend)
        yield mirrored
        mirrored.close()  # every queued write reached SQLite without error


class TestStorageContract(StorageTestCase):
    pass
