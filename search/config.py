"""YAML -> frozen, validated config objects. All validation of user input happens here.

Every error is a ``ConfigError`` naming the file, the dotted key and the value; the CLI
prints it as one line and exits with 2.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from optsearch.constraints import (
    BOOLEAN,
    POSITIVE,
    TEXT,
    AnyOf,
    Interval,
    ListOf,
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
    sample_ahead: bool | str = "auto"  # sample the next trial while the workers train: auto, true, false


@dataclass(frozen=True)
class TrainerConfig:
    name: str | None
    target: str | None
    options: dict


@dataclass(frozen=True)
class WorkersConfig:
    count: int | str  # "auto" or N
    trials_per_gpu: float
    return_freed_memory: bool = False  # trainer processes: glibc malloc returns freed blocks at once (slower)


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


def read(name: str) -> tuple[Path, dict]:
    """A config file's path (as given, or bundled) and its YAML mapping; ConfigError naming
    the file when it cannot be read or is not a mapping."""
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
    return path, doc


def load(name: str, overrides: list[str] | None = None, cwd: Path | None = None) -> Config:
    """Read, override and validate a config. Raises ConfigError carrying the file name."""
    path, doc = read(name)
    try:
        doc = apply_overrides(doc, overrides or [])
        if "arms" in doc:
            raise ConfigError("arms", sorted(doc["arms"]) if isinstance(doc["arms"], dict) else doc["arms"],
                              "a config with arms is an experiment: run it with `optsearch compare`")
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
        "sample_ahead": ("auto", Options("auto", True, False)),
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
        "return_freed_memory": (False, BOOLEAN),
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


# --- experiments: several arms, one verdict ------------------------------------------------
EXPERIMENT_KEYS = TOP_KEYS + ("arms", "verdict")
ARM_KEYS = ("optimizer", "schedule", "param_groups")
ARM_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-")
ARM_NAME_MAX = 20  # the terminal's table fits 80 columns with the name whole


def _arm_name(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be a non-empty string"
    if len(v) > ARM_NAME_MAX or not set(v) <= ARM_NAME_CHARS:
        return (f"must be at most {ARM_NAME_MAX} characters of letters, digits, '_', '+' and '-' "
                f"(it names a study, <experiment>.<arm>, and the report's files)")
    return None


def _seeds(v: Any) -> str | None:
    if isinstance(v, bool):
        return "must be a count (an integer >= 1) or a list of distinct integer seeds"
    if isinstance(v, int):
        return None if v >= 1 else "must be a count (an integer >= 1) or a list of distinct integer seeds"
    rule = ListOf(Interval("int", 0, 2**31 - 1), min_length=1)
    if not rule.is_satisfied_by(v):
        return f"must be a count (an integer >= 1) or {rule}"
    if len(set(v)) != len(v):
        return "must list distinct seeds (each is one paired re-run)"
    return None


ARM_NAME = Rule(_arm_name, "an arm name")
SEEDS = Rule(_seeds, "a count or a list of seeds")


@dataclass(frozen=True)
class VerdictConfig:
    """How the verdict is reached: each arm's ``top_k`` configs re-run with ``seeds`` (the
    same list for every arm), E[max_k] and P(best of k beats) at the ``k`` listed, the
    verdict on ``test_metric`` (None: on the study metric) with gaps under ``min_effect``
    (or one evaluation example) never counted as a difference."""

    top_k: int
    seeds: tuple[int, ...]
    k: tuple[int, ...]
    test_metric: str | None
    min_effect: float


@dataclass(frozen=True)
class Experiment:
    """A config with ``arms:``: one study per arm (``<name>.<arm>``), the same trainer,
    budget and sampler for each, then seed re-runs and a verdict."""

    path: str
    name: str
    arms: dict  # arm name -> Config, in the file's order
    verdict: VerdictConfig
    raw: dict
    notes: tuple[str, ...] = ()

    @property
    def base(self) -> Config:
        """The first arm's config: what every arm shares (study settings, trainer, workers, tracking)."""
        return next(iter(self.arms.values()))

    def rerun(self, arm: str, n_trials: int) -> Config:
        """The config of an arm's seed re-runs: study ``<name>.<arm>.reruns``, the arm's space,
        queued trials only (the random sampler never draws), no pruning."""
        cfg = self.arms[arm]
        sampler = SamplerConfig(*samplers.parse("study.sampler", "random", "sampler", "random"))
        pruner = PrunerConfig(*samplers.parse("study.pruner", "none", "pruner", "none"))
        study = replace(cfg.study, name=f"{cfg.study.name}.reruns", n_trials=max(1, n_trials), sampler=sampler,
                        pruner=pruner)
        return replace(cfg, study=study)


def default_seeds(study_seed: int, count: int) -> tuple[int, ...]:
    """The re-run seeds: ``coordinator.trial_seed(study_seed, -1 - i)``, so never the seed
    of a search trial (those are ``trial_seed(study_seed, n)``, n >= 0)."""
    from optsearch.search.coordinator import trial_seed

    return tuple(trial_seed(study_seed, -1 - i) for i in range(count))


def is_experiment(name: str) -> bool:
    """Whether ``optsearch compare NAME`` names an experiment config (a YAML file, or a
    bundled config, with ``arms:``) rather than a stored study. A name ending in .yaml/.yml
    must be a readable config; one without arms is an error."""
    looks_like_file = name.endswith((".yaml", ".yml"))
    try:
        path, doc = read(name)
    except ConfigError:
        if looks_like_file:
            raise
        return False
    if "arms" in doc:
        return True
    if looks_like_file:
        raise ConfigError("arms", None, "missing: `optsearch compare CONFIG` runs an experiment, which needs "
                                        "arms: (arm name -> its space); to compare stored studies, give their names",
                          file=str(path))
    return False


def load_experiment(name: str, overrides: list[str] | None = None, cwd: Path | None = None) -> Experiment:
    """Read, override and validate an experiment config (one with ``arms:``)."""
    path, doc = read(name)
    try:
        doc = apply_overrides(doc, overrides or [])
        return validate_experiment(doc, str(path), cwd or Path.cwd())
    except ConfigError as err:
        raise err.with_file(str(path)) from None


def validate_experiment(doc: dict, path: str = "<config>", cwd: Path | None = None) -> Experiment:
    """An experiment from its document. Every arm becomes a full ``Config`` (validated like a
    study's) whose space is the shared ``space:`` with the arm's sections in place of the
    shared ones; errors name the key as written (``arms.adamw.optimizer.adamw.lr``)."""
    cwd = cwd or Path.cwd()
    for k, v in doc.items():
        if k not in EXPERIMENT_KEYS:
            raise ConfigError(str(k), v, f"unknown top-level key; allowed: {list(EXPERIMENT_KEYS)}")
    arms_raw = doc.get("arms")
    if not isinstance(arms_raw, dict) or len(arms_raw) < 2:
        raise ConfigError("arms", arms_raw, "must map at least two arm names to their search spaces "
                                            "(e.g. sgd: {optimizer: {sgd: {...}}})")
    raw_study = doc.get("study") or {}
    if not isinstance(raw_study, dict):
        raise ConfigError("study", raw_study, "must be a mapping")
    name = check("study.name", raw_study.get("name", Path(path).stem), TEXT)
    sampler = raw_study.get("sampler") or {"name": "qmc"}  # fair by default: non-adaptive, no pruning
    sampler = {"name": sampler} if isinstance(sampler, str) else sampler
    if isinstance(sampler, dict) and sampler.get("name") == "qmc":
        sampler = {"warn_independent_sampling": False, **sampler}  # each arm's first trial: said once here
    raw_study = {**raw_study, "sampler": sampler, "pruner": raw_study.get("pruner") or {"name": "none"}}
    shared = doc.get("space") or {}
    if not isinstance(shared, dict):
        raise ConfigError("space", shared, "must be a mapping with optimizer, schedule, param_groups")
    tracking = doc.get("tracking") or {}
    if not isinstance(tracking, dict):
        raise ConfigError("tracking", tracking, "must be a mapping")
    tracking = {**tracking, "experiment": tracking.get("experiment") or name}  # every arm logs there

    arms: dict[str, Config] = {}
    notes: list[str] = []
    for arm, spec in arms_raw.items():
        check("arms", arm, ARM_NAME)
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"arms.{arm}", spec, f"must be a mapping of space sections ({list(ARM_KEYS)})")
        for k, v in spec.items():
            if k not in ARM_KEYS:
                raise ConfigError(f"arms.{arm}.{k}", v, f"unknown key; an arm overrides the shared space's "
                                                        f"sections: {list(ARM_KEYS)}")
        arm_doc = {k: doc[k] for k in ("trainer", "workers") if k in doc}
        arm_doc.update(study={**raw_study, "name": f"{name}.{arm}"}, space={**shared, **spec}, tracking=tracking)
        try:
            cfg = validate(arm_doc, path, cwd)
        except ConfigError as err:
            raise _arm_error(err, arm, spec) from None
        arms[arm] = cfg
        for note in cfg.notes:
            note = f"arm {arm}: {note}"
            if note not in notes:
                notes.append(note)

    base = next(iter(arms.values()))
    metric = base.study.metric
    derived = f"test_{metric[4:]}" if metric.startswith("val_") else None
    verdict = check_section("verdict", doc.get("verdict"), {
        "top_k": (3, at_least(1)),
        "seeds": (5, SEEDS),
        "k": ([1, 2, 4, 8], ListOf(at_least(1), min_length=1, increasing=True, example="[1, 2, 4, 8]")),
        "test_metric": (derived, Nullable(TEXT)),
        "min_effect": (0.0, Interval("real", 0, None)),
    })
    seeds = verdict["seeds"]
    seeds = default_seeds(base.study.seed, seeds) if isinstance(seeds, int) else tuple(seeds)
    return Experiment(
        path=path, name=name, arms=arms, raw=doc, notes=tuple(notes),
        verdict=VerdictConfig(verdict["top_k"], seeds, tuple(verdict["k"]), verdict["test_metric"],
                              float(verdict["min_effect"])),
    )


def _arm_error(err: ConfigError, arm: str, spec: dict) -> ConfigError:
    """An arm's validation error, keyed as the user wrote it: ``arms.<arm>.<section>...``
    when the arm gives that section, ``space.<section>...`` when it comes from the shared
    space; other keys (study, trainer, ...) as they are."""
    key = err.key or ""
    if key.startswith("space.") and key.split(".")[1] in spec:
        return ConfigError(f"arms.{arm}." + key[len("space."):], err.value, err.message, err.file)
    if key == "space" and spec:
        return ConfigError(f"arms.{arm}", err.value, err.message, err.file)
    return err
