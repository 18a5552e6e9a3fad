"""Resolved params: check one trial's params dict against the registries, fill defaults.

``build`` and the exporter both go through ``resolve``, so a params dict read back from a
study (possibly written by another version, possibly tampered with) is validated before any
value reaches torch or exported source: unknown names and knobs, and bad values, raise
``ConfigError`` naming the key.
"""

from __future__ import annotations

from typing import Any

from optsearch.constraints import BOOLEAN, POSITIVE, TEXT, UNIT_RIGHT_CLOSED, ListOf, Nullable
from optsearch.errors import ConfigError
from optsearch.spaces.components import Component, Knob
from optsearch.spaces.optimizers import VARIANTS
from optsearch.spaces.schedules import SCHEDULES

GROUP_KNOBS: dict[str, Knob] = {
    "no_decay_bias_norm": Knob(True, BOOLEAN, "no weight decay on norm modules' parameters and biases"),
    "head_lr_mult": Knob(1.0, POSITIVE, "lr multiplier of the model's head"),
    "layer_decay": Knob(1.0, UNIT_RIGHT_CLOSED, "lr multiplier per layer below the head"),
    "head": Knob(None, Nullable(TEXT), "the head's module name (default: the last one the forward pass uses)"),
    "layers": Knob(None, Nullable(ListOf(TEXT, min_length=1, example="[embed, blocks.*, norm, head]")),
                   "layer prefixes, input to output (default: found in the forward pass)", is_list=True),
}

# The optimizer knob that plays "momentum" for one-cycle's momentum cycling.
MOMENTUM_KNOB = {"sgd": "momentum", "adam_l2": "beta1", "adamw": "beta1", "amsgrad": "beta1", "nadamw": "beta1",
                 "radam": "beta1"}


def momentum_override(schedule: dict) -> float | None:
    """The momentum / beta1 that a (resolved) schedule imposes on the optimizer, or None.

    One-cycle with ``cycle_momentum`` sets it to ``max_momentum`` when it is created and
    cycles it from there: the optimizer's own momentum / beta1 knob then does nothing.
    """
    if schedule.get("name") == "onecycle" and schedule.get("cycle_momentum"):
        return schedule["max_momentum"]
    return None


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
        out[k] = list(v) if knob.is_list and v is not None else v
    return out


def _resolve_section(key: str, given: Any, registry: dict[str, Component], fixed: dict | None = None) -> dict:
    """One section's values, checked; ``fixed`` overrides knobs another section imposes."""
    if not isinstance(given, dict):
        raise ConfigError(key, given, "must be a mapping with a 'name'")
    name = given.get("name")
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"{key}.name", name, f"unknown {key.rsplit('.', 1)[-1]}; known: {sorted(registry)}")
    comp = registry[name]
    values = _resolve_knobs(key, given, comp.knobs, skip=("name",))
    values.update(fixed or {})
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
    schedule = _resolve_section(f"{key}.schedule", params["schedule"], SCHEDULES)
    fixed = {}
    name = params["optimizer"].get("name") if isinstance(params["optimizer"], dict) else None
    if momentum_override(schedule) is not None and name in MOMENTUM_KNOB:
        fixed[MOMENTUM_KNOB[name]] = momentum_override(schedule)  # what the optimizer really starts with
    optimizer = _resolve_section(f"{key}.optimizer", params["optimizer"], VARIANTS, fixed)
    rule = VARIANTS[optimizer["name"]].schedule_rule
    found = rule(schedule) if rule else None
    if found:
        knob, message = found
        where, value = (f"{key}.schedule.{knob}", schedule[knob]) if knob else (f"{key}.schedule.name", schedule["name"])
        raise ConfigError(where, value, f"{message} (optimizer {optimizer['name']})")
    return {
        "optimizer": optimizer,
        "schedule": schedule,
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
