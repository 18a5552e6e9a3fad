"""optsearch's cache folder, shared by everything it caches on disk."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$OPTSEARCH_CACHE``, else ``$XDG_CACHE_HOME/optsearch``, else ``~/.cache/optsearch``.

    Holds the empty MLflow store that new local stores copy (``tracking.empty_store``) and,
    in ``cifar10/``, decoded CIFAR-10 that has no writable place beside its data."""
    if os.environ.get("OPTSEARCH_CACHE"):
        return Path(os.environ["OPTSEARCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optsearch"
