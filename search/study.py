"""The Optuna study: storage, sampler and pruner, ownership, what counts against the budget.

- ``prepare`` runs in the driver before Ray starts, so a bad storage, a stored study that
  disagrees with the config, or a live owner is a one-line error within seconds. It claims
  the study for this process and recovers what a crashed run left behind: trials left
  RUNNING fail as ``interrupted`` and their params are queued again.
- ``open_study`` opens it for the coordinator, the study's single writer while it runs.
- The budget: ``study.n_trials`` counts finished trials that count (``counts``): complete,
  pruned, and failures of the trial's own doing (``protocol.Failure``); a trial failed by a
  crash, a lost worker or an interruption was queued again and does not count.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.errors import ConfigError
from optsearch.search import samplers, urls
from optsearch.search.config import Config, PrunerConfig, SamplerConfig, StudyConfig
from optsearch.search.protocol import Failure

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
OWNER = "optsearch.owner"  # study system attrs: internal bookkeeping, not shown as user attrs
SPACE = "optsearch.space"
STALE_AFTER_S = 60.0  # an owner on another host not heard from for this long is taken to be gone
BEAT_EVERY_S = STALE_AFTER_S / 4
# Trial user attrs this module reads and writes.
FAILURE, RETRIED, ATTEMPT, RETRY_OF = "failure", "retried", "attempt", "retry_of"


# --- storage ------------------------------------------------------------------------------
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


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock beside an SQLite store while it is created or migrated.

    Optuna's and MLflow's stores create their tables (and run alembic migrations) on first
    open: two processes opening a fresh store at once race ("table ... already exists",
    "UNIQUE constraint failed: alembic_version"). Other databases: no lock (their servers
    serialise schema changes).
    """
    path = urls.sqlite_path(url)
    if path is None:
        yield
        return
    lock = Path(f"{path}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def discard_unfinished(url: str, content: tuple[str, ...], broken: bool = False) -> bool:
    """Delete an SQLite store whose creation a killed process cut short, if it holds nothing.

    Optuna and MLflow create their schema (and stamp its alembic version) on first open; a
    process killed meanwhile leaves a file the next open refuses ("table _alembic_tmp_...
    already exists", a missing version). Such a file is unfinished when its
    ``alembic_version`` table is missing or an ``_alembic_tmp_*`` table remains, and it
    holds nothing when every ``content`` table is empty or absent. Call under
    ``creation_lock``. ``broken``: the caller's open of it failed, which makes it unfinished
    too (a schema step whose tables were made but whose version stamp was not: "table
    mcp_servers already exists"). Returns whether it was deleted."""
    import sqlite3

    path = urls.sqlite_path(url)
    if path is None or not path.exists():
        return False
    try:
        # read-only: a read-write connection's close would checkpoint and delete the WAL
        # files under the open connections of other processes
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            tables = {name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")}
            unfinished = broken or "alembic_version" not in tables or any(t.startswith("_alembic_tmp") for t in tables)
            empty = all(conn.execute(f'select count(*) from "{t}"').fetchone()[0] == 0 for t in content if t in tables)
    except sqlite3.DatabaseError:
        return False  # not ours to judge: the open that follows says what is wrong
    if not (unfinished and empty):
        return False
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return True


T = TypeVar("T")


def open_remaking_empty(url: str, content: tuple[str, ...], open_: Callable[[], T]) -> T:
    """``open_()`` a store; if that fails on an SQLite store that holds nothing (``content``
    tables empty), delete it and open it again: a killed process can leave a schema half
    made in ways ``discard_unfinished`` cannot see beforehand. Call under ``creation_lock``."""
    try:
        return open_()
    except Exception:
        if not discard_unfinished(url, content, broken=True):
            raise
    return open_()


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage behind an SQLAlchemy URL (the only kind a config accepts),
    created under ``creation_lock``. A server that does not answer fails within ~10 s."""
    engine_kwargs: dict[str, Any] = {}
    if urls.is_sqlite(url):
        fast_sqlite()
        # One writer (the coordinator) holds the file; a timeout covers readers like `export`.
        engine_kwargs = {"connect_args": {"timeout": 30}}
    elif urls.parse(url) is not None and urls.parse(url).get_backend_name() in ("postgresql", "mysql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}
    with creation_lock(url):
        discard_unfinished(url, ("studies", "trials"))
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def make_sampler(cfg: SamplerConfig, conditional: bool = False, offset: int = 0) -> optuna.samplers.BaseSampler:
    """``conditional``: the space has params that exist only for some variants/schedules
    (TPE's ``group: auto``). ``offset``: trials the study already holds. A seeded sampler
    made anew on a resume would replay its sequence from the start (the same params again),
    so its seed moves on with the offset: reproducible for a given resume point, new points
    each time. QMC keeps its seed: Optuna's QMCSampler continues its sequence from the study.
    """
    options = dict(cfg.options)
    if offset and options.get("seed") is not None and cfg.name != "qmc":
        options["seed"] = (options["seed"] + 1_000_003 * offset) % 2**32
    return samplers.make("sampler", cfg.name, options, conditional)


def make_pruner(cfg: PrunerConfig, epochs: int | None = None) -> optuna.pruners.BasePruner:
    return samplers.make("pruner", cfg.name, cfg.options, epochs=epochs)


def open_study(cfg: StudyConfig, storage: optuna.storages.BaseStorage, conditional: bool = False,
               epochs: int | None = None) -> optuna.Study:
    """The stored study (``prepare`` created it), with this run's sampler and pruner."""
    offset = len(storage.get_all_trials(storage.get_study_id_from_name(cfg.name), deepcopy=False))
    return optuna.load_study(study_name=cfg.name, storage=storage, sampler=make_sampler(cfg.sampler, conditional, offset),
                             pruner=make_pruner(cfg.pruner, epochs))


# --- ownership ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Owner:
    """The process that runs a study: host, pid, and the pid's start time (so a reused pid
    is told apart), with its last heartbeat."""

    host: str
    pid: int
    started: float | None
    beat: float = 0.0

    @classmethod
    def me(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()), time.time())

    def alive(self, now: float) -> bool:
        """On this host: whether that very process still runs (a dead or reused pid lapses at
        once). Elsewhere: whether it beat within ``STALE_AFTER_S``."""
        if self.host != socket.gethostname():
            return now - self.beat < STALE_AFTER_S
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, another user's
        started = process_start(self.pid)
        return self.started is None or started is None or abs(started - self.started) < 1.0


def exit_with(owner: Owner, every: float = 0.5) -> None:
    """End this process as soon as ``owner`` (the driver, on this host) is gone.

    The coordinator and the MLflow writer call it: if the driver is killed, they must not
    go on writing while the next run, which the lapsed claim lets start at once, recovers
    the study. (Ray also ends a dead driver's actors, but not at once.)"""
    import threading

    if owner.host != socket.gethostname():
        return

    def watch() -> None:
        while owner.alive(time.time()):
            time.sleep(every)
        os._exit(70)

    threading.Thread(target=watch, daemon=True, name="optsearch-exit-with-driver").start()


def process_start(pid: int) -> float | None:
    """When ``pid`` started (seconds since boot, from /proc), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _study_id(storage: optuna.storages.BaseStorage, name: str) -> int:
    return storage.get_study_id_from_name(name)


def owner_of(storage: optuna.storages.BaseStorage, name: str) -> Owner | None:
    raw = storage.get_study_system_attrs(_study_id(storage, name)).get(OWNER)
    return Owner(**raw) if raw else None


def heartbeat(storage: optuna.storages.BaseStorage, name: str, owner: Owner) -> None:
    storage.set_study_system_attr(_study_id(storage, name), OWNER, asdict(owner) | {"beat": time.time()})


def release(storage: optuna.storages.BaseStorage, name: str, owner: Owner) -> None:
    """Clear the claim, if it is still ``owner``'s."""
    current = owner_of(storage, name)
    if current is not None and (current.host, current.pid) == (owner.host, owner.pid):
        storage.set_study_system_attr(_study_id(storage, name), OWNER, None)


def claim(storage: optuna.storages.BaseStorage, cfg: StudyConfig, owner: Owner) -> None:
    """Make ``owner`` the study's single writer, or refuse while another one is alive."""
    current = owner_of(storage, cfg.name)
    now = time.time()
    if current is not None and (current.host, current.pid) != (owner.host, owner.pid) and current.alive(now):
        raise ConfigError("study.name", cfg.name,
                          f"is being run by another optsearch process (pid {current.pid} on {current.host}, "
                          f"seen {now - current.beat:.0f} s ago); wait for it to end or use another study.name")
    heartbeat(storage, cfg.name, owner)


# --- checks against the stored study ----------------------------------------------------------
def check_matches(study: optuna.Study, cfg: StudyConfig) -> None:
    """A stored study keeps the direction and metric it was created with."""
    direction = study.direction.name.lower()
    if direction != cfg.direction:
        raise ConfigError("study.direction", cfg.direction,
                          f"study {cfg.name!r} in {cfg.storage} was created to {direction}; use another study.name")
    stored = (study.metric_names or [study.user_attrs.get("optsearch.metric")])[0]  # (older studies: a user attr)
    if stored is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([cfg.metric])  # optuna-dashboard shows it instead of "Objective 0"
    elif stored != cfg.metric:
        raise ConfigError("study.metric", cfg.metric,
                          f"study {cfg.name!r} in {cfg.storage} optimises {stored!r}; use another study.name")


def check_space(storage: optuna.storages.BaseStorage, cfg: Config, allow_change: bool) -> None:
    """The stored study was run with the same search space, or the run is refused.

    Trials of two spaces mixed under one name compare the incomparable, and a knob whose
    kind changed (range to choices) cannot be stored at all. ``allow_change`` continues
    with a changed space (the new space is recorded), except for such a kind change.
    """
    now = cfg.space.describe()
    sid = _study_id(storage, cfg.study.name)
    before = storage.get_study_system_attrs(sid).get(SPACE)
    if before is not None and before != now:
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        kinds = [k for k in changed if k in before and k in now and _clash(before[k], now[k])]
        if kinds or not allow_change:
            why = (f"the kind of {kinds} changed, which Optuna cannot store in one study" if kinds
                   else "its trials would mix with the stored ones")
            raise ConfigError("space", changed[:6],
                              f"study {cfg.study.name!r} in {cfg.study.storage} was run with another search space; "
                              f"{why}: start a new study (--set study.name=NEW)"
                              + ("" if kinds else " or pass --allow-space-change to continue"))
    if before != now:
        storage.set_study_system_attr(sid, SPACE, now)
    if before is not None and before != now:  # points queued for the old space are not run
        for t in storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)):
            tid = storage.get_trial_id_from_study_id_trial_number(sid, t.number)
            storage.set_trial_user_attr(tid, "error", "queued for the study's previous search space; not run")
            storage.set_trial_user_attr(tid, RETRIED, True)  # does not count
            storage.set_trial_state_values(tid, TrialState.RUNNING)
            storage.set_trial_state_values(tid, TrialState.FAIL)


def _clash(a: str, b: str) -> bool:
    """Whether two knob descriptions (``Space.describe``) store the same Optuna param with
    distributions of different kinds, which Optuna refuses."""
    def kind(d: str) -> tuple[bool, str]:
        one_minus = d.startswith("one_minus(")
        return one_minus, (d[len("one_minus("):] if one_minus else d).split("(", 1)[0]

    (om_a, ka), (om_b, kb) = kind(a), kind(b)
    return om_a == om_b and ka != kb and "Constant" not in (ka, kb)


# --- counting and recovery ---------------------------------------------------------------------
def failure_of(t: FrozenTrial) -> Failure | None:
    raw = t.user_attrs.get(FAILURE)
    try:
        return Failure(raw) if raw is not None else None
    except ValueError:
        return None


def counts_against_budget(t: FrozenTrial) -> bool:
    """Complete, pruned, or failed by its own doing (not queued again)."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and not t.user_attrs.get(RETRIED, False))


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome: complete, pruned, failed (counted), retried (infrastructure
    failures queued again), running, waiting (queued)."""
    out = dict.fromkeys(("complete", "pruned", "failed", "retried", "running", "waiting"), 0)
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            out["complete"] += 1
        elif t.state == TrialState.PRUNED:
            out["pruned"] += 1
        elif t.state == TrialState.FAIL:
            out["retried" if t.user_attrs.get(RETRIED) else "failed"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
    return out


def counted(study: optuna.Study) -> int:
    c = counts(study)
    return c["complete"] + c["pruned"] + c["failed"]


def requeue(study: optuna.Study, t: FrozenTrial, attempt: int) -> None:
    """Queue ``t``'s params again as a new trial (it runs before any new point is sampled)."""
    study.enqueue_trial(t.params, user_attrs={ATTEMPT: attempt, RETRY_OF: t.user_attrs.get(RETRY_OF, t.number)})


def recover_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Trials left RUNNING by a run that died (its claim lapsed): each fails as
    ``interrupted`` and its params are queued again. Returns their numbers."""
    sid = _study_id(storage, study.study_name)
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = storage.get_trial_id_from_study_id_trial_number(sid, t.number)
        storage.set_trial_user_attr(tid, FAILURE, Failure.INTERRUPTED.value)
        storage.set_trial_user_attr(tid, "error", "interrupted: the run that ran it ended before it did")
        storage.set_trial_user_attr(tid, RETRIED, True)
        study.tell(t.number, state=TrialState.FAIL)
        requeue(study, t, t.user_attrs.get(ATTEMPT, 0))
        numbers.append(t.number)
    return numbers


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` found: the claim, trials that count so far, recovered trials."""

    owner: Owner
    counted: int
    recovered: list


def prepare(cfg: Config, allow_space_change: bool = False) -> Prepared:
    """Before Ray starts: open (or create) the study, check it against the config, claim it,
    and recover what a crashed run left. Bad input raises ``ConfigError`` within seconds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = urls.sqlite_path(cfg.study.storage)
    if path is not None and not path.parent.is_dir():
        raise ConfigError("study.storage", cfg.study.storage, f"its folder {str(path.parent)!r} does not exist")
    try:
        storage = make_storage(cfg.study.storage)
        study = optuna.create_study(study_name=cfg.study.name, storage=storage, direction=cfg.study.direction,
                                    load_if_exists=True)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - SQLAlchemy/driver errors of many kinds
        message = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ConfigError("study.storage", cfg.study.storage, f"cannot open the study: {message}") from None
    try:
        check_matches(study, cfg.study)
        owner = Owner.me()
        claim(storage, cfg.study, owner)
        try:
            check_space(storage, cfg, allow_space_change)
            recovered = recover_interrupted(study, storage)
        except BaseException:
            release(storage, cfg.study.name, owner)
            raise
        return Prepared(owner, counted(study), recovered)
    finally:
        storage.engine.dispose()


def release_claim(cfg: StudyConfig, owner: Owner) -> None:
    """The driver's release at the end of a run (the coordinator has closed)."""
    storage = make_storage(cfg.storage)
    try:
        release(storage, cfg.name, owner)
    finally:
        storage.engine.dispose()


def flush_study(storage: optuna.storages.BaseStorage) -> None:
    """Wait until a mirrored storage's writes reached its persistent storage (others write
    through at once)."""
    from optsearch.search.storage import MirroredStorage

    if isinstance(storage, MirroredStorage):
        storage.flush()
