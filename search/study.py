"""Storage, sampler and pruner -> an ``optuna.Study``; the budget is the study's total."""

from __future__ import annotations

import contextlib

import optuna
from optuna.trial import TrialState

from optsearch.search import samplers, urls
from optsearch.search.config import PrunerConfig, SamplerConfig, StudyConfig

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def make_sampler(cfg: SamplerConfig, conditional: bool = False) -> optuna.samplers.BaseSampler:
    """``conditional``: the space has params that exist only for some variants/schedules.

    TPE's ``group`` mode models such spaces per group of co-occurring params; it costs a
    pass over every trial per ask, so ``group: auto`` enables it only where it matters.
    """
    return samplers.make("sampler", cfg.name, cfg.options, conditional)


def make_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    return samplers.make("pruner", cfg.name, cfg.options)


def fast_sqlite() -> None:
    """WAL journal and synchronous=NORMAL for every SQLite engine of this process.

    The coordinator is the only writer of its study and tracking stores, so it needs no
    fsync per commit (WAL stays durable across process crashes; readers such as the MLflow
    UI or ``optsearch export`` read concurrently). Commits drop from milliseconds to
    microseconds, which is most of the coordinator's per-trial cost.
    """
    import sqlalchemy
    from sqlalchemy import event

    if getattr(fast_sqlite, "done", False):
        return

    @event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _pragmas(dbapi_connection, _record):  # noqa: ANN001
        import sqlite3

        if isinstance(dbapi_connection, sqlite3.Connection):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    fast_sqlite.done = True


def checkpoint_sqlite(url: str) -> None:
    """Fold a WAL-mode SQLite file's log back into the file, so the ``.db`` alone holds
    everything (a user may copy just that file) even when a killed process leaves the
    ``-wal`` file behind. Anything but an existing SQLite file is left alone."""
    import sqlite3

    path = urls.sqlite_path(url)
    if path is not None and path.exists():
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage behind an SQLAlchemy URL (the only kind a config accepts)."""
    engine_kwargs = {}
    if urls.is_sqlite(url):
        fast_sqlite()
        # One writer (the coordinator) holds the file; a timeout covers readers like `export`.
        engine_kwargs = {"connect_args": {"timeout": 30}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def open_study(cfg: StudyConfig, mirrored: bool = True,
               conditional: bool = False) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create the study, or load it when it exists: re-running a config resumes it.

    Returns the study and the storage it was opened on (``abandon_stale`` and
    ``flush_study`` take that storage: ``optuna.Study`` does not expose its own).
    ``mirrored``: serve reads from memory and write behind (``storage.MirroredStorage``);
    only for the study's single writer, the coordinator. Call ``flush_study`` before exit.
    """
    storage = make_storage(cfg.storage)
    if mirrored:
        from optsearch.search.storage import MirroredStorage

        storage = MirroredStorage(storage)
    study = optuna.create_study(
        study_name=cfg.name,
        storage=storage,
        sampler=make_sampler(cfg.sampler, conditional),
        pruner=make_pruner(cfg.pruner),
        direction=cfg.direction,
        load_if_exists=True,
    )
    return study, storage


def check_matches(study: optuna.Study, cfg: StudyConfig) -> None:
    """A stored study must keep the direction and metric it was created with."""
    from optsearch.errors import ConfigError

    direction = study.direction.name.lower()
    if direction != cfg.direction:
        raise ConfigError("study.direction", cfg.direction,
                          f"study {cfg.name!r} in {cfg.storage} was created to {direction}; use another study.name")
    stored = study.user_attrs.get("optsearch.metric")
    if stored is None:
        study.set_user_attr("optsearch.metric", cfg.metric)
    elif stored != cfg.metric:
        raise ConfigError("study.metric", cfg.metric,
                          f"study {cfg.name!r} in {cfg.storage} optimises {stored!r}; use another study.name")


OWNER = "optsearch.owner"
STALE_AFTER_S = 60.0  # an owner not heard from for this long is taken to be gone


def me() -> dict:
    import os
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


def claim(study: optuna.Study, cfg: StudyConfig, now: float) -> None:
    """Make this process the study's single writer, or refuse while another one is alive.

    The owner renews ``beat`` while it runs (``heartbeat``) and clears it on close; after a
    crash, the claim goes stale after STALE_AFTER_S seconds.
    """
    from optsearch.errors import ConfigError

    owner = study.user_attrs.get(OWNER)
    if owner and {k: owner.get(k) for k in ("host", "pid")} != me() and now - owner.get("beat", 0) < STALE_AFTER_S:
        raise ConfigError("study.name", cfg.name,
                          f"is being run by another optsearch process (pid {owner.get('pid')} on {owner.get('host')}, "
                          f"seen {now - owner['beat']:.0f} s ago); wait for it to end or use another study.name")
    heartbeat(study, now)


def heartbeat(study: optuna.Study, now: float) -> None:
    study.set_user_attr(OWNER, {**me(), "beat": now})


def release(study: optuna.Study) -> None:
    study.set_user_attr(OWNER, None)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def abandon_stale(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Trials left RUNNING by an earlier, interrupted invocation: tag them ``abandoned`` and
    mark them FAIL; returns their numbers. ``storage``: the one ``study`` was opened on.

    The coordinator is the study's only writer, so a RUNNING trial at start-up has no owner.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # WAITING (enqueued) stays queued
        storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                    "abandoned", True)
        study.tell(t.number, state=TrialState.FAIL)
        numbers.append(t.number)
    return numbers


def flush_study(storage: optuna.storages.BaseStorage) -> None:
    """Wait until a mirrored storage's writes reached its persistent storage (others write
    through at once)."""
    from optsearch.search.storage import MirroredStorage

    if isinstance(storage, MirroredStorage):
        storage.flush()
