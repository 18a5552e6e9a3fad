"""``optsearch export``: a finished trial as paste-ready Python, YAML or JSON.

Every finished trial carries ``user_attrs["params"]`` (its resolved params) and
``user_attrs["build"]`` (``steps_per_epoch``, ``epochs``, ``batch_size``, ``train_size``).
The Python form comes from ``spaces.export.to_python``, rendered from the same recipes the
trial was built from. Nothing read from the study reaches the output unescaped: values are
written by ``repr`` or by the YAML/JSON dumpers, and the study name and header text become
escaped comments.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import yaml

from optsearch.errors import ConfigError
from optsearch.search import urls
from optsearch.spaces.export import context, to_python, trial_header
from optsearch.spaces.params import resolve

FORMATS = ("python", "yaml", "json")


def load_study(storage: str, study_name: str) -> optuna.Study:
    """A stored study, or a one-line ConfigError (never a new empty database)."""
    message = urls.problem(storage)
    if message:
        raise ConfigError("--storage", storage, message)
    path = urls.sqlite_path(storage)
    if path is not None and not path.exists():
        # optuna would create an empty database here; say what is wrong instead
        raise ConfigError("--storage", storage, "no such database file")
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        try:
            known = sorted(optuna.get_all_study_names(storage))
        except Exception:  # noqa: BLE001 - only to enrich the message
            known = []
        hint = f"; studies there: {known}" if known else "; the storage holds no studies"
        raise ConfigError("study", study_name, f"no such study in {storage!r}{hint}") from None


def _pick(study: optuna.Study, study_name: str, trial_number: int | None) -> optuna.trial.FrozenTrial:
    if trial_number is None:
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise ConfigError("study", study_name, "has no finished trials to export")
        try:
            return study.best_trial
        except (ValueError, RuntimeError) as err:  # e.g. a multi-objective study
            raise ConfigError("study", study_name, f"has no single best trial ({err}); pass --trial") from None
    if isinstance(trial_number, bool) or not isinstance(trial_number, int):
        raise ConfigError("--trial", trial_number, "must be a trial number")
    for t in study.get_trials(deepcopy=False):
        if t.number == trial_number:
            return t
    raise ConfigError("--trial", trial_number, f"no such trial in study {study_name!r} ({len(study.trials)} trials)")


def export_trial(storage: str, study_name: str, trial_number: int | None = None, fmt: str = "python") -> str:
    """The best trial of ``study_name`` (or trial ``trial_number``) as ``fmt`` text.

    ``fmt``: ``python`` (a module with ``build_optimizer(model)`` and
    ``build_scheduler(optimizer, steps_per_epoch, epochs)``, needing only torch), ``yaml`` or
    ``json`` (the params and the build info). Bad input raises ``ConfigError``.
    """
    if fmt not in FORMATS:
        raise ConfigError("--format", fmt, f"must be one of {list(FORMATS)}")
    study = load_study(storage, study_name)
    trial = _pick(study, study_name, trial_number)
    params = trial.user_attrs.get("params")
    if params is None:
        raise ConfigError("--trial", trial.number, "this trial has no recorded params (it may not have started)")
    build = trial.user_attrs.get("build")
    if build is None:
        raise ConfigError("--trial", trial.number, "this trial has no recorded build info")
    where = f"trial {trial.number}"
    try:
        ctx = context(build, key=f"{where}.build")
        resolved = resolve(params, key=f"{where}.params")
    except ConfigError as err:
        raise ConfigError("--trial", trial.number, f"cannot export: {err}") from None

    value = trial.value if trial.values is not None and len(trial.values) == 1 else trial.values
    if fmt == "python":
        header = trial_header(study_name, trial.number, trial.state.name, value, vars(ctx))
        try:
            return to_python(params, build, header=header)
        except ConfigError as err:
            raise ConfigError("--trial", trial.number, f"cannot export: {err}") from None
    doc: dict[str, Any] = {
        "study": study_name,
        "trial": trial.number,
        "state": trial.state.name,
        "value": value,
        "params": resolved,
        "build": {k: getattr(ctx, k) for k in ("steps_per_epoch", "epochs", "batch_size", "train_size")},
    }
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
