"""Resolved params: check one trial's params dict against the registries, fill defaults.

``build`` and the exporter both go through ``resolve``, so a params dict read back from a
study (possibly written by another version, possibly tampered with) is validated before any
value reaches torch or exported source: unknown names and knobs, and bad values, raise
``ConfigError`` naming the key.
"""

from __future__ import annotations

from typing import Any

from optsearch.errors import ConfigError
from optsearch.spaces.components import Component, Knob, boolean, positive
from optsearch.spaces.optimizers import VARIANTS
from optsearch.spaces.schedules import SCHEDULES


def _layer_decay(v: Any) -> str | None:
    return None if positive(v) is None and v <= 1 else "must be in (0, 1]"


GROUP_KNOBS: dict[str, Knob] = {
    "no_decay_bias_norm": Knob(True, boolean, "no weight decay on biases and norm parameters"),
    "head_lr_mult": Knob(1.0, positive, "lr multiplier of the model's last layer (its head)"),
    "layer_decay": Knob(1.0, _layer_decay, "lr multiplier per layer below the head"),
}


def _resolve_knobs(key: str, given: Any, knobs: dict[str, Knob], skip: tuple = ()) -> dict:
    if not isinstance(given, dict):
        raise ConfigError(key, given, "must be a mapping")
    out: dict[str, Any] = {}
    for k, v in given.items():
        if k in skip:
            continue
        if k not in knobs:
            raise ConfigError(f"{key}.{k}", v, f"unknown knob; known: {sorted(knobs)}")
    for k, knob in knobs.items():
        v = given.get(k, knob.default)
        if knob.is_list and isinstance(v, tuple):
            v = list(v)
        message = knob.check(v)
        if message:
            raise ConfigError(f"{key}.{k}", v, message)
        out[k] = list(v) if knob.is_list else v
    return out


def _resolve_section(key: str, given: Any, registry: dict[str, Component]) -> dict:
    if not isinstance(given, dict):
        raise ConfigError(key, given, "must be a mapping with a 'name'")
    name = given.get("name")
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"{key}.name", name, f"unknown {key.rsplit('.', 1)[-1]}; known: {sorted(registry)}")
    comp = registry[name]
    values = _resolve_knobs(key, given, comp.knobs, skip=("name",))
    if comp.consistency:
        found = comp.consistency(values)
        if found:
            knob, message = found
            raise ConfigError(f"{key}.{knob}", values[knob], message)
    return {"name": name, **values}


def resolve(params: Any, key: str = "params") -> dict:
    """``params`` checked and completed: every knob present, defaults filled in."""
    if not isinstance(params, dict):
        raise ConfigError(key, params, "must be a mapping with optimizer, schedule, param_groups")
    for k in params:
        if k not in ("optimizer", "schedule", "param_groups"):
            raise ConfigError(f"{key}.{k}", params[k], "unknown key; allowed: ['optimizer', 'param_groups', 'schedule']")
    if "optimizer" not in params:
        raise ConfigError(key, params, "has no 'optimizer'")
    if "schedule" not in params:
        raise ConfigError(key, params, "has no 'schedule'")
    groups = params.get("param_groups")
    return {
        "optimizer": _resolve_section(f"{key}.optimizer", params["optimizer"], VARIANTS),
        "schedule": _resolve_section(f"{key}.schedule", params["schedule"], SCHEDULES),
        "param_groups": _resolve_knobs(f"{key}.param_groups", {} if groups is None else groups, GROUP_KNOBS),
    }


def check_budget(params: dict, ctx: Any, key: str = "params") -> None:
    """Checks that need the training length (resolved params)."""
    for section, registry in (("optimizer", VARIANTS), ("schedule", SCHEDULES)):
        values = params[section]
        comp = registry[values["name"]]
        if comp.budget:
            found = comp.budget(values, ctx)
            if found:
                knob, message = found
                raise ConfigError(f"{key}.{section}.{knob}", values[knob], message)
