"""A study's search space: which variants, which schedules, which knobs, and their ranges.

YAML form (every knob is a constant or a distribution; see ``distributions``)::

    optimizer:                 # one variant, a list of variants, or variant -> knob specs
      adamw: {lr: {low: 1e-4, high: 1e-2, log: true}, beta2: {one_minus: {low: 1e-3, high: 0.1, log: true}}}
      sgd:   {lr: {low: 1e-2, high: 1, log: true}, nesterov: true}
    schedule: {cosine: {warmup_epochs: 1}}
    param_groups: {no_decay_bias_norm: true}

Several variants (or schedules) make a categorical; each one's knobs are sampled only when
it is chosen, under its own name (``adamw.lr``, ``sgd.lr``), so each keeps its own range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from optsearch.errors import ConfigError
from optsearch.spaces import distributions
from optsearch.spaces.components import Component, Knob, boolean, positive, unit_closed
from optsearch.spaces.optimizers import VARIANTS
from optsearch.spaces.schedules import SCHEDULES

GROUP_KNOBS: dict[str, Knob] = {
    "no_decay_bias_norm": Knob(True, boolean, "no weight decay on biases and norm parameters"),
    "head_lr_mult": Knob(1.0, positive, "lr multiplier of the model's last layer (its head)"),
    "layer_decay": Knob(1.0, unit_closed, "lr multiplier per layer below the head"),
}


@dataclass(frozen=True)
class Section:
    """Choices of one registry (optimizer or schedule): name -> {knob: distribution}."""

    key: str
    options: dict[str, dict[str, distributions.Distribution]]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        names = list(self.options)
        name = names[0] if len(names) == 1 else trial.suggest_categorical(self.key, names)
        values = {k: d.sample(trial, f"{name}.{k}") for k, d in self.options[name].items()}
        return {"name": name, **values}


def _check_knob(key: str, spec: Any, knob: Knob) -> distributions.Distribution:
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
        if comp.consistency and all(isinstance(d, distributions.Constant) for d in full.values()):
            message = comp.consistency({k: d.value for k, d in full.items()})
            if message:
                raise ConfigError(f"{key}.{name}", knobs, message)
        options[name] = full
    return Section(key, options)


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

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """One trial's resolved params: plain nested dicts, picklable, JSON-able."""
        params = {
            "optimizer": self.optimizer.sample(trial),
            "schedule": self.schedule.sample(trial),
            "param_groups": {k: d.sample(trial, f"param_groups.{k}") for k, d in self.groups.items()},
        }
        comp = VARIANTS[params["optimizer"]["name"]]
        if comp.consistency:
            message = comp.consistency(params["optimizer"])
            if message:
                raise ValueError(f"sampled optimizer params are inconsistent: {message}")
        return params
