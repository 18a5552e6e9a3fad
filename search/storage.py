"""A write-behind mirror of an Optuna storage for the coordinator, the study's only writer.

Reads (the sampler's and pruner's ``get_all_trials``, dozens per trial) come from an
in-memory copy; every write is applied to that copy at once and queued, in order, for a
background thread that writes it to the persistent storage (SQLite by default). Being the
only writer makes the copy exact. ``flush`` waits until the persistent storage has caught
up; the coordinator flushes when it closes. Against plain ``RDBStorage`` this takes the
coordinator's per-trial cost from tens of milliseconds to about one (bench/overhead.py).

If the process dies, at most the last few milliseconds of writes are lost: a trial left
RUNNING in the store is marked failed at the next start (``study.abandon_stale``).
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from typing import Any, Callable, Container, Sequence

from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.study._frozen import FrozenStudy
from optuna.study._study_direction import StudyDirection
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)


class MirroredStorage(BaseStorage):
    def __init__(self, backend: BaseStorage):
        self.backend = backend
        self.memory = InMemoryStorage()
        self._study_ids: dict[int, int] = {}  # memory study id -> backend study id
        self._trial_ids: dict[int, int] = {}  # memory trial id -> backend trial id (writer thread)
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

    def _later(self, op: Callable[[], Any]) -> None:
        self._queue.put(op)

    def flush(self) -> None:
        """Block until every queued write reached the backend; raise if any failed."""
        self._queue.join()
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{len(errors)} write(s) to the study storage failed; first: {errors[0]}")

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join()

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
            self._trial_ids[tid] = t._trial_id
        self._study_ids[sid] = backend_id
        return sid

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        backend_id = self.backend.create_new_study(directions, study_name)
        return self._mirror(backend_id)

    def delete_study(self, study_id: int) -> None:
        self.flush()
        self.backend.delete_study(self._study_ids.pop(study_id))
        self.memory.delete_study(study_id)

    def get_study_id_from_name(self, study_name: str) -> int:
        try:
            return self.memory.get_study_id_from_name(study_name)
        except KeyError:
            return self._mirror(self.backend.get_study_id_from_name(study_name))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.memory.set_study_user_attr(study_id, key, value)
        bid = self._study_ids[study_id]
        self._later(lambda: self.backend.set_study_user_attr(bid, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
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
        self.flush()
        return self.backend.get_all_studies()

    # --- trials ---------------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        tid = self.memory.create_new_trial(study_id, template_trial)
        snapshot = copy.deepcopy(self.memory.get_trial(tid))  # same start time and state in both
        bid = self._study_ids[study_id]

        def create() -> None:
            self._trial_ids[tid] = self.backend.create_new_trial(bid, template_trial=snapshot)

        self._later(create)
        return tid

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        self.memory.set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self._later(lambda: self.backend.set_trial_param(
            self._trial_ids[trial_id], param_name, param_value_internal, distribution))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        changed = self.memory.set_trial_state_values(trial_id, state, values)
        if changed:
            values = None if values is None else list(values)
            self._later(lambda: self.backend.set_trial_state_values(self._trial_ids[trial_id], state, values))
        return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.memory.set_trial_intermediate_value(trial_id, step, intermediate_value)
        self._later(lambda: self.backend.set_trial_intermediate_value(
            self._trial_ids[trial_id], step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.memory.set_trial_user_attr(trial_id, key, value)
        value = copy.deepcopy(value)
        self._later(lambda: self.backend.set_trial_user_attr(self._trial_ids[trial_id], key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.memory.set_trial_system_attr(trial_id, key, value)
        value = copy.deepcopy(value)
        self._later(lambda: self.backend.set_trial_system_attr(self._trial_ids[trial_id], key, value))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.memory.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.memory.get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self.memory.get_all_trials(study_id, deepcopy=deepcopy, states=states)
