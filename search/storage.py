"""A write-behind mirror of an Optuna storage for the coordinator, the study's only writer.

Reads (the sampler's and pruner's ``get_all_trials``, dozens per trial) come from an
in-memory copy; every write is applied to that copy at once and queued, in order, for a
background thread that writes it to the persistent storage (SQLite by default). Being the
only writer makes the copy exact. ``flush`` waits until the persistent storage has caught
up; the coordinator flushes when it closes. Against plain ``RDBStorage`` this takes the
coordinator's per-trial cost from tens of milliseconds to about one (bench/overhead.py).

If the process dies, at most the last few milliseconds of writes are lost: a trial left
RUNNING in the store is marked failed at the next start (``study.abandon_stale``).

It passes Optuna's storage contract suite (tests/test_storage_contract.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Container, Iterator, Sequence

from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    # Only for the annotation of get_all_studies, whose FrozenStudy values come from
    # InMemoryStorage: Optuna exports FrozenStudy from no public module (5.0).
    from optuna.study._frozen import FrozenStudy

log = logging.getLogger(__name__)


class MirroredStorage(BaseStorage):
    """``backend`` behind an ``InMemoryStorage`` copy: reads from memory, writes behind.

    Contract:
    - Every id a caller sees (study and trial ids, and ``FrozenStudy``/``FrozenTrial`` ids
      from every method) is the in-memory copy's; the backend's own ids stay inside.
    - A write is checked and applied in memory first (its errors reach the caller and
      nothing is queued), then persisted by the writer thread in call order. A failure
      there is logged and raised by the next ``flush``.
    - A study of the backend is copied into memory, trials included, the first time it is
      named (``get_study_id_from_name``) or listed (``get_all_studies``). From then on this
      object must be the study's only writer, or the copy goes stale.
    - ``flush`` blocks until the backend has every write; ``close`` flushes and stops the
      writer (reads still work, writes raise).
    - Timestamps the backend sets itself (``datetime_complete``, and ``datetime_start`` of
      a WAITING trial set RUNNING) are the moment the writer persisted the change, a few
      milliseconds after the one in memory.
    """

    def __init__(self, backend: BaseStorage):
        self.backend = backend
        self._start(InMemoryStorage(), {}, {})

    def _start(self, memory: InMemoryStorage, study_ids: dict[int, int], trial_ids: dict[int, int]) -> None:
        self.memory = memory
        self._study_ids = study_ids  # memory study id -> backend study id
        # memory trial id -> backend trial id; filled by the writer thread for new trials.
        # A trial copied from the backend finished has none: it can no longer be written.
        self._trial_ids = trial_ids
        self._lock = threading.Lock()  # a write to memory and its queued copy stay in call order
        self._closed = False
        self._queue: queue.Queue = queue.Queue()
        self._errors: list[str] = []
        self._thread = threading.Thread(target=self._write_loop, name="optsearch-storage", daemon=True)
        self._thread.start()

    # --- the writer ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            op = self._queue.get()
            try:
                if op is None:
                    return
                op()
            except Exception as err:  # keep going; flush() reports it
                message = f"{type(err).__name__}: {err}"
                log.error("persisting to the study storage failed: %s", message)
                self._errors.append(message)
            finally:
                self._queue.task_done()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the MirroredStorage is closed")
            yield

    def _later(self, op: Callable[[], Any]) -> None:
        """Queue ``op`` for the writer thread (call inside ``_writing``)."""
        self._queue.put(op)

    def flush(self) -> None:
        """Block until every queued write reached the backend; raise if any failed."""
        self._queue.join()
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{len(errors)} write(s) to the study storage failed; first: {errors[0]}")

    def close(self) -> None:
        """Persist what is queued and stop the writer thread; raise if a write failed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)  # after every queued write
        self._thread.join()
        self.flush()

    # --- pickling -----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Pickle a flushed snapshot: the backend (``RDBStorage`` pickles its URL, not its
        connections), a copy of the in-memory studies and the id maps, so every id handed out
        stays valid in the copy. A failed write makes pickling raise (see ``flush``).

        The copy starts its own writer thread on the same backend, and so believes it is the
        only writer too: keep writing through one of the two (hand the storage over).
        """
        with self._lock:
            self.flush()
            return {"backend": self.backend, "memory": copy.deepcopy(self.memory),
                    "study_ids": dict(self._study_ids), "trial_ids": dict(self._trial_ids)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.backend = state["backend"]
        self._start(state["memory"], state["study_ids"], state["trial_ids"])

    # --- studies --------------------------------------------------------------------------
    def _mirror(self, backend_id: int) -> int:
        """Copy one backend study, trials included, into memory; returns its memory id."""
        name = self.backend.get_study_name_from_id(backend_id)
        sid = self.memory.create_new_study(self.backend.get_study_directions(backend_id), name)
        for k, v in self.backend.get_study_user_attrs(backend_id).items():
            self.memory.set_study_user_attr(sid, k, v)
        for k, v in self.backend.get_study_system_attrs(backend_id).items():
            self.memory.set_study_system_attr(sid, k, v)
        for t in self.backend.get_all_trials(backend_id, deepcopy=False):
            tid = self.memory.create_new_trial(sid, template_trial=t)
            if not t.state.is_finished():  # only these can still be written
                self._trial_ids[tid] = self.backend.get_trial_id_from_study_id_trial_number(backend_id, t.number)
        self._study_ids[sid] = backend_id
        return sid

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        with self._writing():
            return self._mirror(self.backend.create_new_study(directions, study_name))

    def delete_study(self, study_id: int) -> None:
        with self._writing():
            backend_id = self._study_ids[study_id]
            self.flush()
            self.backend.delete_study(backend_id)
            self.memory.delete_study(study_id)
            del self._study_ids[study_id]

    def get_study_id_from_name(self, study_name: str) -> int:
        try:
            return self.memory.get_study_id_from_name(study_name)
        except KeyError:
            pass
        with self._lock:  # one copy per study, even when two threads ask at once
            try:
                return self.memory.get_study_id_from_name(study_name)
            except KeyError:
                return self._mirror(self.backend.get_study_id_from_name(study_name))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        value = copy.deepcopy(value)
        with self._writing():
            self.memory.set_study_user_attr(study_id, key, value)
            bid = self._study_ids[study_id]
            self._later(lambda: self.backend.set_study_user_attr(bid, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        value = copy.deepcopy(value)
        with self._writing():
            self.memory.set_study_system_attr(study_id, key, value)
            bid = self._study_ids[study_id]
            self._later(lambda: self.backend.set_study_system_attr(bid, key, value))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.memory.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.memory.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.memory.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.memory.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        """Every study of the backend, under this storage's ids (copies the ones not yet in
        memory: a full read of each, so it is not for the per-trial path)."""
        for study in self.backend.get_all_studies():
            self.get_study_id_from_name(study.study_name)
        return self.memory.get_all_studies()

    # --- trials ---------------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        with self._writing():
            tid = self.memory.create_new_trial(study_id, template_trial)
            snapshot = copy.deepcopy(self.memory.get_trial(tid))  # same start time and state in both
            bid = self._study_ids[study_id]

            def create() -> None:
                self._trial_ids[tid] = self.backend.create_new_trial(bid, template_trial=snapshot)

            self._later(create)
        return tid

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        with self._writing():
            self.memory.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            self._later(lambda: self.backend.set_trial_param(
                self._trial_ids[trial_id], param_name, param_value_internal, distribution))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        values = None if values is None else list(values)
        with self._writing():
            changed = self.memory.set_trial_state_values(trial_id, state, values)
            if changed:
                self._later(lambda: self.backend.set_trial_state_values(self._trial_ids[trial_id], state, values))
        return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._writing():
            self.memory.set_trial_intermediate_value(trial_id, step, intermediate_value)
            self._later(lambda: self.backend.set_trial_intermediate_value(
                self._trial_ids[trial_id], step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        value = copy.deepcopy(value)
        with self._writing():
            self.memory.set_trial_user_attr(trial_id, key, value)
            self._later(lambda: self.backend.set_trial_user_attr(self._trial_ids[trial_id], key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        value = copy.deepcopy(value)
        with self._writing():
            self.memory.set_trial_system_attr(trial_id, key, value)
            self._later(lambda: self.backend.set_trial_system_attr(self._trial_ids[trial_id], key, value))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.memory.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self.memory.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self.memory.get_trial_param(trial_id, param_name)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.memory.get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self.memory.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self.memory.get_best_trial(study_id)
