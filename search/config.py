"""YAML -> frozen, validated config objects. All validation of user input happens here.

Every error is a ``ConfigError`` naming the file, the dotted key and the value; the CLI
prints it as one line and exits with 2.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from optsearch.errors import ConfigError
from optsearch.spaces.space import Space

DEFAULT_STORAGE = "sqlite:///optsearch.db"
DEFAULT_TRACKING = "sqlite:///mlflow.db"

Check = Callable[[Any], "str | None"]


# --- small checks -----------------------------------------------------------------------
def _int(low: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer"
        if low is not None and v < low:
            return f"must be an integer >= {low}"
        return None

    return check


def _number(low: float | None = None, strict: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "must be a number"
        if low is not None and (v <= low if strict else v < low):
            return f"must be a number {'>' if strict else '>='} {low}"
        return None

    return check


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(*allowed: Any) -> Check:
    return lambda v: None if v in allowed else f"must be one of {list(allowed)}"


def _optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def _either(*checks: Check) -> Check:
    def check(v: Any) -> str | None:
        messages = [c(v) for c in checks]
        return None if any(m is None for m in messages) else " or ".join(m for m in messages if m)

    return check


def _section(key: str, raw: Any, schema: dict[str, tuple[Any, Check]]) -> dict[str, Any]:
    """Validate a mapping against {name: (default, check)}; returns defaults filled in."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "must be a mapping")
    for k, v in raw.items():
        if k not in schema:
            raise ConfigError(f"{key}.{k}", v, f"unknown key; allowed: {sorted(schema)}")
    out = {}
    for k, (default, check) in schema.items():
        v = raw.get(k, default)
        message = check(v)
        if message:
            raise ConfigError(f"{key}.{k}", v, message)
        out[k] = v
    return out


# --- samplers and pruners ----------------------------------------------------------------
_SEED = (0, _optional(_int(0)))
SAMPLERS: dict[str, dict[str, tuple[Any, Check]]] = {
    "tpe": {
        "seed": _SEED,
        "n_startup_trials": (10, _int(0)),
        "multivariate": (True, _bool),
        "group": ("auto", _either(_one_of("auto"), _bool)),  # auto: only for conditional spaces
        "constant_liar": (True, _bool),
    },
    "random": {"seed": _SEED},
    "qmc": {"seed": _SEED, "qmc_type": ("sobol", _one_of("sobol", "halton")), "scramble": (True, _bool)},
}
PRUNERS: dict[str, dict[str, tuple[Any, Check]]] = {
    "none": {},
    "median": {"n_startup_trials": (5, _int(0)), "n_warmup_steps": (2, _int(0)), "interval_steps": (1, _int(1))},
    "successive_halving": {
        "min_resource": ("auto", _either(_one_of("auto"), _int(1))),
        "reduction_factor": (4, _int(2)),
        "min_early_stopping_rate": (0, _int(0)),
    },
    "hyperband": {
        "min_resource": (1, _int(1)),
        "max_resource": ("auto", _either(_one_of("auto"), _int(1))),
        "reduction_factor": (3, _int(2)),
    },
}


def _named(key: str, raw: Any, registry: dict[str, dict], default: str) -> tuple[str, dict]:
    if raw is None:
        raw = {"name": default}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "must be a name or a mapping with 'name'")
    raw = dict(raw)
    name = raw.pop("name", default)
    if name not in registry:
        raise ConfigError(f"{key}.name", name, f"unknown; known: {sorted(registry)}")
    for k, v in raw.items():
        if k not in registry[name]:
            allowed = sorted(registry[name]) or "none"
            raise ConfigError(f"{key}.{k}", v, f"not an option of {key.split('.')[-1]} '{name}' (its options: {allowed})")
    return name, _section(key, raw, registry[name])


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

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.study.name


TOP_KEYS = ("study", "trainer", "space", "workers", "tracking")


def bundled_dir() -> Path:
    """Where the configs shipped with the package live (works for editable and wheel installs)."""
    return Path(str(resources.files("optsearch.configs")))


def resolve_path(name: str) -> Path:
    """A path as given, else a bundled config of that (base) name."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
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
    except yaml.YAMLError:
        parsed = value
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
    message = _str(v)
    if message:
        return message
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(v)
    except ArgumentError:
        return "must be a database URL such as sqlite:///optsearch.db or postgresql://host/db"
    return None


def _tracking_uri(v: Any) -> str | None:
    message = _str(v)
    if message:
        return message
    scheme = v.split("://", 1)[0].split("+", 1)[0] if "://" in v else None
    if scheme is not None and scheme not in TRACKING_SCHEMES:
        return f"unknown scheme {scheme!r}; MLflow takes {list(TRACKING_SCHEMES)} or a local path"
    return None


def _abs_sqlite(url: str, base: Path) -> str:
    """sqlite:///relative.db -> an absolute path, so Ray processes in other dirs agree."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url[len(prefix):] != ":memory:":
        return prefix + str((base / url[len(prefix):]).resolve())
    return url


def load(name: str, overrides: list[str] | None = None, cwd: Path | None = None) -> Config:
    """Read, override and validate a config. Raises ConfigError carrying the file name."""
    path = resolve_path(name)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError("", None, f"cannot read: {err.strerror}", file=name) from None
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


def validate(doc: dict, path: str = "<config>", cwd: Path | None = None) -> Config:
    cwd = cwd or Path.cwd()
    for k, v in doc.items():
        if k not in TOP_KEYS:
            raise ConfigError(str(k), v, f"unknown top-level key; allowed: {list(TOP_KEYS)}")

    raw_study = doc.get("study") or {}
    if not isinstance(raw_study, dict):
        raise ConfigError("study", raw_study, "must be a mapping")
    raw_study = dict(raw_study)
    sampler_raw, pruner_raw = raw_study.pop("sampler", None), raw_study.pop("pruner", None)
    study = _section("study", raw_study, {
        "name": (Path(path).stem, _str),
        "metric": ("val_acc", _str),
        "direction": ("maximize", _one_of("maximize", "minimize")),
        "n_trials": (20, _int(1)),
        "storage": (DEFAULT_STORAGE, _storage_url),
        "seed": (0, _int(0)),
    })
    sampler = SamplerConfig(*_named("study.sampler", sampler_raw, SAMPLERS, "tpe"))
    pruner = PrunerConfig(*_named("study.pruner", pruner_raw, PRUNERS, "median"))
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
    if tname is not None and not isinstance(tname, str):
        raise ConfigError("trainer.name", tname, "must be a string")
    if target is not None and not isinstance(target, str):
        raise ConfigError("trainer.target", target, "must be a string 'pkg.mod:fit'")
    from optsearch.trainers.registry import check_options

    check_options(tname, target, options)
    trainer_cfg = TrainerConfig(tname, target, options)

    space = Space.from_config(doc.get("space"))

    workers = _section("workers", doc.get("workers"), {
        "count": ("auto", _either(_one_of("auto"), _int(1))),
        "trials_per_gpu": (1, _number(0, strict=True)),
    })
    tracking = _section("tracking", doc.get("tracking"), {
        "uri": (os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING), _tracking_uri),
        "experiment": (None, _optional(_str)),
        "enabled": (True, _bool),
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
    )
