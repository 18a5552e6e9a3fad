"""Storage URLs, parsed in one place: the Optuna storage and MLflow's tracking URI.

Both are SQLAlchemy URLs when they name a database (``sqlite:///optsearch.db``,
``postgresql://host/db``); the tracking URI may also be a plain path or ``http(s)://``.
Every function here parses with ``sqlalchemy.engine.make_url``; none touches the disk.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

BAD_URL = "must be a database URL such as sqlite:///optsearch.db or postgresql://host/db"


def parse(url: str) -> URL | None:
    """The parsed URL, or None when ``url`` is not an SQLAlchemy URL (a plain path, say)."""
    try:
        return make_url(url)
    except (ArgumentError, TypeError, ValueError):
        return None


def problem(url: str) -> str | None:
    """Why ``url`` cannot be an Optuna storage (a one-line message), or None when it can."""
    return BAD_URL if parse(url) is None else None


def is_sqlite(url: str) -> bool:
    """An SQLite URL of any driver (``sqlite://``, ``sqlite+pysqlite:///...``)."""
    parsed = parse(url)
    return parsed is not None and parsed.get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The database file of a file-backed SQLite URL, as written (it may be relative).

    None for anything else: another database, an in-memory SQLite (``sqlite://``,
    ``sqlite:///:memory:``), an SQLite ``file:`` URI (``?uri=true``), or not a URL at all.
    """
    parsed = parse(url)
    if parsed is None or parsed.get_backend_name() != "sqlite" or parsed.query.get("uri") == "true":
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def absolute(url: str, base_dir: Path) -> str:
    """``url`` with a relative SQLite file resolved against ``base_dir``, so processes
    started in other directories (Ray workers) open the same file.

    Every other URL or URI (absolute paths, other databases, http(s)://, plain paths) comes
    back unchanged.
    """
    path = sqlite_path(url)
    if path is None or path.is_absolute():
        return url
    resolved = str((base_dir / path).resolve())
    return make_url(url).set(database=resolved).render_as_string(hide_password=False)
