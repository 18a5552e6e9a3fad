"""A study's search space: which variants, which schedules, which knobs, and their ranges.

YAML form (every knob is a constant or a distribution; see ``distributions``)::

    optimizer:                 # one variant, a list of variants, or variant -> knob specs
      adamw: {lr: {low: 1.0e-4, high: 1.0e-2, log: true}, beta2: {one_minus: {low: 1.0e-3, high: 0.1, log: true}}}
      sgd:   {lr: {low: 1.0e-2, high: 1.0, log: true}, nesterov: true}
    schedule: {cosine: {warmup_epochs: 1}, sgdr: {T_0: 2, T_mult: {choices: [1, 2]}}}
    param_groups: {no_decay_bias_norm: true}

(PyYAML reads ``1e-4`` as a string: write ``1.0e-4``.)

Several variants (or schedules) make a categorical; each one's knobs are sampled only when
it is chosen, under its own name (``adamw.lr``, ``sgd.lr``, ``sgdr.T_mult``), so each keeps
its own range, and a knob exists only under the variant or schedule that owns it: ``T_mult``
under ``cosine`` is an error naming its owner (``sgdr``). A list-valued knob (``step``'s
``milestones``) takes a YAML list as its one value. Cross-knob rules (Nesterov needs
momentum > 0, base_momentum <= max_momentum, ...) are checked on every combination of the
searched knobs' extreme values, so a space that could sample a broken combination is
rejected when it is loaded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import optuna

from optsearch.errors import ConfigError
from optsearch.spaces import distributions
from optsearch.spaces.components import Component, Knob
from optsearch.spaces.optimizers import VARIANTS
from optsearch.spaces.params import GROUP_KNOBS
from optsearch.spaces.schedules import SCHEDULES

__all__ = ["GROUP_KNOBS", "Section", "Space"]

# Cross-knob checks try every combination of the knobs' extreme values (range ends, all
# choices) up to this many; the checks here are monotone, so the ends decide.
_MAX_COMBINATIONS = 4096


@dataclass(frozen=True)
class Section:
    """Choices of one registry (optimizer or schedule): name -> {knob: distribution}."""

    key: str
    options: dict[str, dict[str, distributions.Distribution]]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        names = list(self.options)
        name = names[0] if len(names) == 1 else trial.suggest_categorical(self.key, names)
        values = {k: _copy(d.sample(trial, f"{name}.{k}")) for k, d in self.options[name].items()}
        return {"name": name, **values}


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def _check_knob(key: str, spec: Any, knob: Knob) -> distributions.Distribution:
    if knob.is_list and isinstance(spec, (list, tuple)):
        dist = distributions.Constant(list(spec))  # a list knob's value, not searchable
    elif knob.is_list and isinstance(spec, dict) and "choices" in spec:
        raise ConfigError(key, spec, "a list-valued knob cannot be searched; give one list")
    else:
        dist = distributions.parse(key, spec)
    for value in dist.values():
        message = knob.check(value)
        if message:
            raise ConfigError(key, value, message)
    return dist


def _owners(registry: dict[str, Component], knob: str) -> list[str]:
    return [name for name, comp in registry.items() if knob in comp.knobs]


def _parse_section(key: str, spec: Any, registry: dict[str, Component]) -> Section:
    if isinstance(spec, str):
        spec = {spec: {}}
    elif isinstance(spec, list):
        if not spec or not all(isinstance(s, str) for s in spec):
            raise ConfigError(key, spec, "a list must name at least one " + key)
        spec = {s: {} for s in spec}
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(key, spec, f"must name one {key}, a list of them, or map each to its knobs")
    options: dict[str, dict[str, distributions.Distribution]] = {}
    for name, knobs in spec.items():
        if name not in registry:
            raise ConfigError(f"{key}", name, f"unknown {key}; known: {sorted(registry)}")
        comp = registry[name]
        knobs = {} if knobs is None else knobs
        if not isinstance(knobs, dict):
            raise ConfigError(f"{key}.{name}", knobs, "must map knob names to values or distributions")
        parsed: dict[str, distributions.Distribution] = {}
        for knob, value in knobs.items():
            kkey = f"{key}.{name}.{knob}"
            if knob not in comp.knobs:
                owners = _owners(registry, knob)
                hint = f"it belongs to {owners}" if owners else f"knobs of {name}: {sorted(comp.knobs)}"
                raise ConfigError(kkey, value, f"not a knob of {key} '{name}'; {hint}")
            parsed[knob] = _check_knob(kkey, value, comp.knobs[knob])
        full = {k: parsed.get(k, distributions.Constant(knob.default)) for k, knob in comp.knobs.items()}
        if comp.consistency:
            _check_consistency(f"{key}.{name}", comp, full)
        options[name] = full
    return Section(key, options)


def _check_consistency(key: str, comp: Component, full: dict[str, distributions.Distribution]) -> None:
    """Reject a space where some sampled combination would break a cross-knob rule."""
    names = list(full)
    choices = [full[k].values() for k in names]
    count = 1
    for c in choices:
        count *= len(c)
    if count > _MAX_COMBINATIONS:
        return  # too many to try; Space.sample still checks each trial
    for combo in itertools.product(*choices):
        values = dict(zip(names, combo))
        found = comp.consistency(values)
        if found:
            knob, message = found
            searched = sorted(k for k in names if not isinstance(full[k], distributions.Constant))
            where = f" (some values of the searched knobs {searched} break it)" if searched else ""
            raise ConfigError(f"{key}.{knob}", values[knob], message + where)


@dataclass(frozen=True)
class Space:
    optimizer: Section
    schedule: Section
    groups: dict[str, distributions.Distribution]

    @classmethod
    def from_config(cls, spec: Any, key: str = "space") -> "Space":
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ConfigError(key, spec, "must be a mapping with optimizer, schedule, param_groups")
        allowed = {"optimizer", "schedule", "param_groups"}
        for k in spec:
            if k not in allowed:
                raise ConfigError(f"{key}.{k}", spec[k], f"unknown key; allowed: {sorted(allowed)}")
        optimizer = _parse_section(f"{key}.optimizer", spec.get("optimizer", "adamw"), VARIANTS)
        schedule = _parse_section(f"{key}.schedule", spec.get("schedule", "cosine"), SCHEDULES)
        groups_spec = spec.get("param_groups") or {}
        if not isinstance(groups_spec, dict):
            raise ConfigError(f"{key}.param_groups", groups_spec, "must be a mapping")
        groups = {}
        for k, knob in GROUP_KNOBS.items():
            groups[k] = _check_knob(f"{key}.param_groups.{k}", groups_spec.get(k, knob.default), knob)
        for k in groups_spec:
            if k not in GROUP_KNOBS:
                raise ConfigError(f"{key}.param_groups.{k}", groups_spec[k], f"unknown key; allowed: {sorted(GROUP_KNOBS)}")
        # Sections sample under "optimizer"/"schedule" (not the dotted config key).
        return cls(
            Section("optimizer", optimizer.options),
            Section("schedule", schedule.options),
            groups,
        )

    @property
    def conditional(self) -> bool:
        """Whether some params exist only in some trials (a choice of variants or schedules)."""
        return len(self.optimizer.options) > 1 or len(self.schedule.options) > 1

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """One trial's resolved params: plain nested dicts, picklable, JSON-able."""
        params = {
            "optimizer": self.optimizer.sample(trial),
            "schedule": self.schedule.sample(trial),
            "param_groups": {k: d.sample(trial, f"param_groups.{k}") for k, d in self.groups.items()},
        }
        for section, registry in (("optimizer", VARIANTS), ("schedule", SCHEDULES)):
            comp = registry[params[section]["name"]]
            found = comp.consistency(params[section]) if comp.consistency else None
            if found:
                raise ValueError(f"sampled {section} params are inconsistent: {found[1]}")
        return params
