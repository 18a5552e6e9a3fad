"""YAML -> frozen, validated config objects. All validation of user input happens here.

Every error is a ``ConfigError`` naming the file, the dotted key and the value; the CLI
prints it as one line and exits with 2.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from optsearch.constraints import (
    BOOLEAN,
    POSITIVE,
    TEXT,
    AnyOf,
    Nullable,
    Options,
    Rule,
    at_least,
    check,
    check_section,
)
from optsearch.errors import ConfigError
from optsearch.search import samplers
from optsearch.spaces.space import Space

DEFAULT_STORAGE = "sqlite:///optsearch.db"
DEFAULT_TRACKING = "sqlite:///mlflow.db"


# --- config objects ----------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerConfig:
    name: str = "tpe"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerConfig:
    name: str = "median"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    metric: str
    direction: str
    n_trials: int
    storage: str
    seed: int
    sampler: SamplerConfig
    pruner: PrunerConfig
    nan: str = "fail"  # a non-finite reported metric: fail the trial, or prune it
    max_retries: int = 2  # re-runs of params whose trial a crash or a lost worker cut short
    trial_timeout: float | None = None  # seconds; a trial running longer fails
    sample_ahead: bool = True  # sample the next trials while the workers train


@dataclass(frozen=True)
class TrainerConfig:
    name: str | None
    target: str | None
    options: dict


@dataclass(frozen=True)
class WorkersConfig:
    count: int | str  # "auto" or N
    trials_per_gpu: float


@dataclass(frozen=True)
class TrackingConfig:
    uri: str
    experiment: str | None
    enabled: bool


@dataclass(frozen=True)
class Config:
    path: str
    study: StudyConfig
    trainer: TrainerConfig
    space: Space
    workers: WorkersConfig
    tracking: TrackingConfig
    raw: dict  # the document after --set overrides (logged with every study)
    notes: tuple[str, ...] = ()  # what the user should know: points the builders reject, ...

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.study.name


TOP_KEYS = ("study", "trainer", "space", "workers", "tracking")


def bundled_dir() -> Path:
    """Where the configs shipped with the package live (works for editable and wheel installs)."""
    return Path(str(resources.files("optsearch.configs")))


def description(path: Path) -> str:
    """A config's header comment (its leading ``#`` lines) as one paragraph."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(ln for ln in lines if ln)


def resolve_path(name: str) -> Path:
    """A path as given, else a bundled config of that (base) name."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        raise ConfigError("", None, "is a directory; give a config file (a .yaml) in it", file=name)
    for candidate in (p.name, p.name + ".yaml", p.name + ".yml"):
        bundled = bundled_dir() / candidate
        if bundled.is_file():
            return bundled
    known = sorted(f.name for f in bundled_dir().glob("*.yaml"))
    raise ConfigError("", None, f"no such config file (not in the working directory nor bundled: {known})", file=name)


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError("--set", text, "must look like a.b.c=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError("--set", text, f"the value is not valid YAML ({problem}); quote it to pass a string") from None
    return key.strip().split("."), parsed


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    doc = copy.deepcopy(doc)
    for text in overrides:
        path, value = parse_override(text)
        node = doc
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError("--set", text, f"{'.'.join(path[:i + 1])} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return doc


TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


def _storage_url(v: Any) -> str | None:
    """An Optuna storage is an SQLAlchemy URL (sqlite:///file.db, postgresql://...)."""
    from optsearch.search import urls

    return TEXT.message(v) or urls.problem(v)


def _tracking_uri(v: Any) -> str | None:
    """An MLflow tracking URI: a URL of a scheme MLflow knows, or a local path."""
    from optsearch.search import urls

    message = TEXT.message(v)
    if message:
        return message
    parsed = urls.parse(v)
    scheme = parsed.get_backend_name() if parsed is not None and "://" in v else None
    if scheme is not None and scheme not in TRACKING_SCHEMES:
        return f"unknown scheme {scheme!r}; MLflow takes {list(TRACKING_SCHEMES)} or a local path"
    return None


def _abs_sqlite(url: str, base: Path) -> str:
    """sqlite:///relative.db -> an absolute path, so Ray processes in other dirs agree."""
    from optsearch.search import urls

    return urls.absolute(url, base)


def load(name: str, overrides: list[str] | None = None, cwd: Path | None = None) -> Config:
    """Read, override and validate a config. Raises ConfigError carrying the file name."""
    path = resolve_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError("", None, f"cannot read: {err.strerror}", file=name) from None
    except UnicodeDecodeError as err:
        raise ConfigError("", None, f"not UTF-8 text (byte {err.start}): a config is a YAML file", file=name) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError("", None, f"invalid YAML{where}: {problem}", file=str(path)) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("", doc, "a config must be a YAML mapping", file=str(path))
    try:
        doc = apply_overrides(doc, overrides or [])
        return validate(doc, str(path), cwd or Path.cwd())
    except ConfigError as err:
        raise err.with_file(str(path)) from None


STORAGE_URL = Rule(_storage_url, "a database URL")
TRACKING_URI = Rule(_tracking_uri, "an MLflow tracking URI")


def validate(doc: dict, path: str = "<config>", cwd: Path | None = None) -> Config:
    cwd = cwd or Path.cwd()
    for k, v in doc.items():
        if k not in TOP_KEYS:
            raise ConfigError(str(k), v, f"unknown top-level key; allowed: {list(TOP_KEYS)}")

    raw_study = doc.get("study") or {}
    if not isinstance(raw_study, dict):
        raise ConfigError("study", raw_study, "must be a mapping")
    study = check_section("study", raw_study, {
        "name": (Path(path).stem, TEXT),
        "metric": ("val_acc", TEXT),
        "direction": ("maximize", Options("maximize", "minimize")),
        "n_trials": (20, at_least(1)),
        "storage": (DEFAULT_STORAGE, STORAGE_URL),
        "seed": (0, at_least(0)),
        "nan": ("fail", Options("fail", "prune")),
        "max_retries": (2, at_least(0)),
        "trial_timeout": (None, Nullable(POSITIVE)),
        "sample_ahead": (True, BOOLEAN),
    }, ignore=("sampler", "pruner"))
    sampler = SamplerConfig(*samplers.parse("study.sampler", raw_study.get("sampler"), "sampler", "tpe"))
    pruner = PrunerConfig(*samplers.parse("study.pruner", raw_study.get("pruner"), "pruner", "median"))
    study["storage"] = _abs_sqlite(study["storage"], cwd)
    study_cfg = StudyConfig(sampler=sampler, pruner=pruner, **study)

    raw_trainer = doc.get("trainer")
    if raw_trainer is None:
        raise ConfigError("trainer", None, "missing: give trainer: {name: digits} or {target: 'pkg.mod:fit'}")
    if isinstance(raw_trainer, str):
        raw_trainer = {"name": raw_trainer}
    if not isinstance(raw_trainer, dict):
        raise ConfigError("trainer", raw_trainer, "must be a mapping")
    options = dict(raw_trainer)
    tname, target = options.pop("name", None), options.pop("target", None)
    if (tname is None) == (target is None):
        raise ConfigError("trainer", raw_trainer, "give exactly one of 'name' (built-in) or 'target' ('pkg.mod:fit')")
    if tname is not None:
        check("trainer.name", tname, TEXT)
    if target is not None:
        check("trainer.target", target, TEXT)
    from optsearch.trainers.registry import check_options, planned_budget

    check_options(tname, target, options)
    trainer_cfg = TrainerConfig(tname, target, options)

    space = Space.from_config(doc.get("space"))
    budget = planned_budget(tname, target, options)
    notes = list(space.notes) + (space.rejections(budget) if budget is not None else [])

    workers = check_section("workers", doc.get("workers"), {
        "count": ("auto", AnyOf(Options("auto"), at_least(1))),
        "trials_per_gpu": (1, POSITIVE),
    })
    tracking = check_section("tracking", doc.get("tracking"), {
        "uri": (os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING), TRACKING_URI),
        "experiment": (None, Nullable(TEXT)),
        "enabled": (True, BOOLEAN),
    })
    tracking["uri"] = _abs_sqlite(tracking["uri"], cwd)
    return Config(
        path=path,
        study=study_cfg,
        trainer=trainer_cfg,
        space=space,
        workers=WorkersConfig(**workers),
        tracking=TrackingConfig(**tracking),
        raw=doc,
        notes=tuple(notes),
    )
