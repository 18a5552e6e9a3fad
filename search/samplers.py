"""Samplers and pruners by name, their options read from Optuna's own signatures.

``study.sampler: {name: tpe, n_ei_candidates: 48}`` takes any keyword of the Optuna class's
constructor whose annotation is plain YAML (int, float, bool, str, None, or a Literal of
them): options that Optuna adds in a new release work without code here, and callables
(``gamma``, ``constraints_func``) or objects (``independent_sampler``) are not offered.
Optuna's constructor then checks the values itself; its refusal becomes the one-line error.

optsearch's defaults differ from Optuna's where ``DEFAULTS`` says, each for a reason given
there; everything else is Optuna's default.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from typing import Any

from optsearch.constraints import BOOLEAN, AnyOf, Constraint, Interval, Nullable, Options, Text, check
from optsearch.errors import ConfigError

SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "qmc": "optuna.samplers.QMCSampler",
    "gp": "optuna.samplers.GPSampler",
}
PRUNERS = {
    "none": "optuna.pruners.NopPruner",
    "median": "optuna.pruners.MedianPruner",
    "percentile": "optuna.pruners.PercentilePruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "threshold": "optuna.pruners.ThresholdPruner",
    "wilcoxon": "optuna.pruners.WilcoxonPruner",
}

# Where optsearch's defaults differ from Optuna's.
DEFAULTS: dict[str, dict[str, Any]] = {
    # A study is reproducible by default: seeded samplers.
    # TPE: multivariate models knob interactions (lr x weight decay); constant_liar keeps
    # parallel workers from sampling the same point; group (multivariate per group of
    # co-occurring params) matters only where params are conditional, so "auto".
    "tpe": {"seed": 0, "multivariate": True, "constant_liar": True, "group": "auto"},
    "random": {"seed": 0},
    "qmc": {"seed": 0, "scramble": True},  # scrambled Sobol: unbiased, no point at the corner
    "gp": {"seed": 0},
    "median": {"n_warmup_steps": 2},  # epoch-1 accuracies say little
}
# Options optsearch adds on top of the class's own (name -> {option: constraint}).
EXTRA: dict[str, dict[str, Constraint]] = {"tpe": {"group": AnyOf(Options("auto"), BOOLEAN)}}

# Lower bounds of integer options that Optuna itself does not check (a hyperband
# reduction_factor of 1 would only fail mid-study), by option name.
MINIMUM = {"n_startup_trials": 0, "n_warmup_steps": 0, "interval_steps": 1, "reduction_factor": 2,
           "n_ei_candidates": 1, "min_early_stopping_rate": 0, "min_resource": 1, "max_resource": 1,
           "n_min_trials": 1, "bootstrap_count": 0, "n_startup_steps": 0}

_ATOMS: dict[str, Constraint] = {"float": Interval("real"), "bool": BOOLEAN, "str": Text()}


def _load(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _constraint(annotation: Any, minimum: int | None = None) -> Constraint | None:
    """A constraint for a YAML-typed annotation string (``int | None``, ``Literal['a']``),
    or None when the option takes something YAML cannot write (a callable, an object).
    ``minimum`` bounds its integers."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts, nullable = [], False
    for atom in (a.strip() for a in re.split(r"\|(?![^\[]*\])", text)):
        literal = re.fullmatch(r"Literal\[(.*)\]", atom)
        if atom == "None":
            nullable = True
        elif atom == "int":
            parts.append(Interval("int", minimum))
        elif atom in _ATOMS:
            parts.append(_ATOMS[atom])
        elif literal:
            parts.append(Options(*(v.strip().strip("'\"") for v in literal.group(1).split(","))))
        else:
            return None
    if not parts:
        return None
    inner = parts[0] if len(parts) == 1 else AnyOf(*parts)
    return Nullable(inner) if nullable else inner


def options_of(kind: str, name: str) -> dict[str, tuple[Any, Constraint]]:
    """``{option: (default, constraint)}`` for sampler/pruner ``name`` (kind: sampler | pruner)."""
    cls = _load((SAMPLERS if kind == "sampler" else PRUNERS)[name])
    out: dict[str, tuple[Any, Constraint]] = {}
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        constraint = EXTRA.get(name, {}).get(pname) or _constraint(p.annotation, MINIMUM.get(pname))
        if constraint is not None:
            out[pname] = (DEFAULTS.get(name, {}).get(pname, p.default), constraint)  # p.empty: required
    return out


def parse(key: str, raw: Any, kind: str, default: str) -> tuple[str, dict]:
    """``(name, options)`` from a config's ``study.sampler`` / ``study.pruner`` value (a name,
    or a mapping with ``name`` and options), every option checked and defaults filled in;
    Optuna's constructor is tried once so that its own checks run at load time."""
    registry = SAMPLERS if kind == "sampler" else PRUNERS
    if raw is None:
        raw = {"name": default}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "must be a name or a mapping with 'name'")
    raw = dict(raw)
    name = raw.pop("name", default)
    aware = check(f"{key}.schedule_aware", raw.pop("schedule_aware", False), BOOLEAN) if kind == "pruner" else False
    if name not in registry:
        raise ConfigError(f"{key}.name", name, f"unknown {kind}; known: {sorted(registry)}")
    schema = options_of(kind, name)
    for k, v in raw.items():
        if k not in schema:
            raise ConfigError(f"{key}.{k}", v, f"not an option of {kind} '{name}' (its options: {sorted(schema) or 'none'})")
    for k, (d, _) in schema.items():
        if d is inspect.Parameter.empty and k not in raw:
            raise ConfigError(f"{key}.{k}", None, f"{kind} '{name}' needs this option (it has no default)")
    options = {k: check(f"{key}.{k}", raw.get(k, d), c) for k, (d, c) in schema.items()}
    make(kind, name, options, conditional=False, key=key)  # Optuna's own checks, now
    if aware:  # optsearch's own: consult the pruner only where the trial's schedule allows
        options["schedule_aware"] = True
    return name, options


def make(kind: str, name: str, options: dict, conditional: bool = False, key: str | None = None,
         epochs: int | None = None):
    """The Optuna sampler or pruner. ``conditional``: the space has params that exist only for
    some variants/schedules (decides TPE's ``group: auto``). A pruner with ``schedule_aware``
    comes wrapped in ``pruning.ScheduleAwarePruner`` (``epochs``: the trainer's planned
    training length, for trials that have not recorded theirs)."""
    options = dict(options)
    if options.pop("schedule_aware", False):
        from optsearch.search.pruning import ScheduleAwarePruner

        return ScheduleAwarePruner(make(kind, name, options, conditional, key), epochs)
    if name == "tpe":
        group = conditional if options["group"] == "auto" else options["group"]
        options["group"] = bool(group and options["multivariate"])  # Optuna's group needs multivariate
    cls = _load((SAMPLERS if kind == "sampler" else PRUNERS)[name])
    own = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in options.items() if own[k].default is own[k].empty or v != own[k].default
               or type(v) is not type(own[k].default)}  # Optuna's defaults stay implicit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature notices
        try:
            return cls(**options)
        except (ValueError, TypeError, ImportError, ModuleNotFoundError) as err:
            where = key or f"study.{kind}"
            raise ConfigError(where, {"name": name, **options}, f"Optuna refuses it: {err}") from None
