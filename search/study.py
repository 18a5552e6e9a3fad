"""Storage, sampler and pruner -> an ``optuna.Study``; the budget is the study's total."""

from __future__ import annotations

import contextlib

import optuna
from optuna.trial import TrialState

from optsearch.search.config import PrunerConfig, SamplerConfig, StudyConfig

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def make_sampler(cfg: SamplerConfig, conditional: bool = False) -> optuna.samplers.BaseSampler:
    """``conditional``: the space has params that exist only for some variants/schedules.

    TPE's ``group`` mode models such spaces per group of co-occurring params; it costs a
    pass over every trial per ask, so ``group: auto`` enables it only where it matters.
    """
    o = cfg.options
    if cfg.name == "tpe":
        group = conditional if o["group"] == "auto" else o["group"]
        return optuna.samplers.TPESampler(
            seed=o["seed"], n_startup_trials=o["n_startup_trials"], multivariate=o["multivariate"],
            group=group and o["multivariate"], constant_liar=o["constant_liar"],
        )
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=o["seed"])
    if cfg.name == "qmc":
        return optuna.samplers.QMCSampler(seed=o["seed"], qmc_type=o["qmc_type"], scramble=o["scramble"])
    raise ValueError(cfg.name)


def make_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    o = cfg.options
    if cfg.name == "none":
        return optuna.pruners.NopPruner()
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=o["n_startup_trials"], n_warmup_steps=o["n_warmup_steps"], interval_steps=o["interval_steps"]
        )
    if cfg.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=o["min_resource"], reduction_factor=o["reduction_factor"],
            min_early_stopping_rate=o["min_early_stopping_rate"],
        )
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=o["min_resource"], max_resource=o["max_resource"], reduction_factor=o["reduction_factor"]
        )
    raise ValueError(cfg.name)


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
    ``-wal`` file behind."""
    import sqlite3

    prefix = "sqlite:///"
    if url.startswith(prefix):
        path = url[len(prefix):].split("?", 1)[0]
        if path and path != ":memory:":
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def make_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("sqlite:"):
        fast_sqlite()
        # One writer (the coordinator) holds the file; a timeout covers readers like `export`.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})
    return optuna.storages.get_storage(url)


def open_study(cfg: StudyConfig, mirrored: bool = True, conditional: bool = False) -> optuna.Study:
    """Create the study, or load it when it exists: re-running a config resumes it.

    ``mirrored``: serve reads from memory and write behind (``storage.MirroredStorage``);
    only for the study's single writer, the coordinator. Call ``flush_study`` before exit.
    """
    storage = make_storage(cfg.storage)
    if mirrored:
        from optsearch.search.storage import MirroredStorage

        storage = MirroredStorage(storage)
    return optuna.create_study(
        study_name=cfg.name,
        storage=storage,
        sampler=make_sampler(cfg.sampler, conditional),
        pruner=make_pruner(cfg.pruner),
        direction=cfg.direction,
        load_if_exists=True,
    )


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


def abandon_stale(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by an earlier, interrupted invocation: mark them FAIL.

    The coordinator is the study's only writer, so a RUNNING trial at start-up has no owner.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    numbers = []
    for t in stale:
        if t.state == TrialState.WAITING:
            continue  # enqueued trials stay queued
        study._storage.set_trial_user_attr(t._trial_id, "abandoned", True)
        study.tell(t.number, state=TrialState.FAIL)
        numbers.append(t.number)
    return numbers


def flush_study(study: optuna.Study) -> None:
    """Wait until a mirrored study's writes reached its persistent storage."""
    flush = getattr(study._storage, "flush", None)
    if flush is not None:
        flush()
