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
rejected when it is loaded. So are the rules between an optimizer and its schedule: a
schedule-free variant runs only under ``constant`` without warmup, muon not under one-cycle's
momentum cycling.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from optsearch.errors import ConfigError, shown
from optsearch.spaces import distributions
from optsearch.spaces.components import Component, Knob
from optsearch.spaces.optimizers import VARIANTS
from optsearch.spaces.params import GROUP_KNOBS, MOMENTUM_KNOB, momentum_override
from optsearch.spaces.schedules import SCHEDULES

__all__ = ["GROUP_KNOBS", "Section", "Space"]

# Cross-knob checks try every combination of the knobs' extreme values (range ends, all
# choices) up to this many; the checks here are monotone, so the ends decide.
_MAX_COMBINATIONS = 4096


@dataclass(frozen=True)
class Section:
    """Choices of one registry (optimizer or schedule): name -> {knob: distribution}.

    ``given``: the knobs the config wrote for each choice (the rest are defaults).
    """

    key: str
    options: dict[str, dict[str, distributions.Distribution]]
    given: dict[str, frozenset] = field(default_factory=dict)

    def sample(self, trial: optuna.Trial, fixed: dict | None = None) -> dict[str, Any]:
        """One choice and its knobs; knobs in ``fixed`` (name -> {knob: value}) take that
        value and are not sampled."""
        names = list(self.options)
        name = names[0] if len(names) == 1 else trial.suggest_categorical(self.key, names)
        pinned = (fixed or {}).get(name, {})
        values = {k: pinned[k] if k in pinned else _copy(d.sample(trial, f"{name}.{k}"))
                  for k, d in self.options[name].items()}
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
        if message:  # the value as written; the one that breaks the rule, when it was derived
            derived = "" if isinstance(dist, distributions.Constant) else f"it gives {shown(value)}, which "
            raise ConfigError(key, spec, derived + message)
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
    given: dict[str, frozenset] = {}
    for name, knobs in spec.items():
        if name not in registry:
            raise ConfigError(f"{key}", name, f"unknown {key}; known: {sorted(registry)}")
        comp = registry[name]
        missing = comp.available() if comp.available else None
        if missing:
            raise ConfigError(f"{key}", name, missing)
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
        given[name] = frozenset(parsed)
    return Section(key, options, given)


def _check_consistency(key: str, comp: Component, full: dict[str, distributions.Distribution]) -> None:
    """Reject a space where some sampled combination would break a cross-knob rule."""
    for values in _combinations(full) or []:  # too many to try: Space.sample checks each trial
        found = comp.consistency(values)
        if found:
            knob, message = found
            searched = sorted(k for k in full if distributions.is_searched(full[k]))
            where = f" (some values of the searched knobs {searched} break it)" if searched else ""
            raise ConfigError(f"{key}.{knob}", values[knob], message + where)


def _combinations(full: dict[str, distributions.Distribution]):
    """Every combination of the knobs' bounding values (range ends, all choices), or None
    when there are more than ``_MAX_COMBINATIONS``."""
    names = list(full)
    choices = [full[k].values() for k in names]
    if math.prod(len(c) for c in choices) > _MAX_COMBINATIONS:
        return None
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def _overrides(name: str, schedule: dict[str, distributions.Distribution]) -> str:
    """Whether a schedule choice replaces the optimizer's momentum: 'always', 'sometimes', 'never'."""
    seen = {momentum_override({"name": name, **values}) is not None for values in _combinations(schedule) or []}
    return "always" if seen == {True} else "sometimes" if True in seen else "never"


@dataclass(frozen=True)
class Space:
    optimizer: Section
    schedule: Section
    groups: dict[str, distributions.Distribution]
    notes: tuple[str, ...] = ()  # what the user should know about how this space samples

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
        _check_schedule_rules(key, optimizer, schedule)
        notes = _momentum_notes(key, optimizer, schedule)
        # Sections sample under "optimizer"/"schedule" (not the dotted config key).
        return cls(
            Section("optimizer", optimizer.options, optimizer.given),
            Section("schedule", schedule.options, schedule.given),
            groups,
            tuple(notes),
        )

    @property
    def conditional(self) -> bool:
        """Whether some params exist only in some trials (a choice of variants or schedules)."""
        return len(self.optimizer.options) > 1 or len(self.schedule.options) > 1

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """One trial's resolved params: plain nested dicts, picklable, JSON-able.

        The schedule is sampled first: when it replaces the optimizer's momentum / beta1
        (one-cycle's momentum cycling), that knob is not sampled but set to the value the
        schedule starts it at.
        """
        schedule = self.schedule.sample(trial)
        momentum = momentum_override(schedule)
        fixed = {} if momentum is None else {name: {knob: momentum} for name, knob in MOMENTUM_KNOB.items()}
        params = {
            "optimizer": self.optimizer.sample(trial, fixed),
            "schedule": schedule,
            "param_groups": {k: d.sample(trial, f"param_groups.{k}") for k, d in self.groups.items()},
        }
        for section, registry in (("optimizer", VARIANTS), ("schedule", SCHEDULES)):
            comp = registry[params[section]["name"]]
            found = comp.consistency(params[section]) if comp.consistency else None
            if found:
                raise ValueError(f"sampled {section} params are inconsistent: {found[1]}")
        rule = VARIANTS[params["optimizer"]["name"]].schedule_rule
        found = rule(schedule) if rule else None
        if found:
            raise ValueError(f"sampled optimizer and schedule cannot be combined: {found[1]}")
        return params

    def describe(self) -> dict[str, str]:
        """Every knob of the space, by its config path, as text: ``Constant(0.9)``, Optuna's
        distribution (``FloatDistribution(high=0.1, log=True, low=0.0001, step=None)``) or
        ``one_minus(...)``. Two spaces sample alike exactly when their descriptions are equal."""
        out = {"optimizer": f"Choice({list(self.optimizer.options)})",
               "schedule": f"Choice({list(self.schedule.options)})"}
        for section in (self.optimizer, self.schedule):
            for name, knobs in section.options.items():
                for knob, d in knobs.items():
                    out[f"{section.key}.{name}.{knob}"] = _describe(d)
        for knob, d in self.groups.items():
            out[f"param_groups.{knob}"] = _describe(d)
        return out

    def searched(self, params: dict, sampled: dict) -> dict[str, str]:
        """The knobs a trial's params were searched on: resolved path -> Optuna's name.

        One naming scheme is shown to people (MLflow, the terminal, exports): the resolved
        path and value, ``optimizer.beta2 = 0.929``. Optuna stores what it sampled, under
        the owner's name: ``adamw.beta2.one_minus = 0.071``; a choice of variant is
        ``optimizer`` (shown as ``optimizer.name``). ``sampled``: the trial's Optuna params.
        """
        out = {}
        for section in (self.optimizer, self.schedule):
            name = params[section.key]["name"]
            if section.key in sampled:
                out[f"{section.key}.name"] = section.key
            for knob, d in section.options[name].items():
                optuna_name = f"{name}.{knob}" + (".one_minus" if isinstance(d, distributions.OneMinus) else "")
                if optuna_name in sampled:
                    out[f"{section.key}.{knob}"] = optuna_name
        for knob in self.groups:
            if f"param_groups.{knob}" in sampled:
                out[f"param_groups.{knob}"] = f"param_groups.{knob}"
        return out

    def summary(self) -> list[str]:
        """What the space searches, one line per choice or searched knob, for people."""
        lines = []
        for section in (self.optimizer, self.schedule):
            names = list(section.options)
            lines.append(f"{section.key}: {' | '.join(names)}")
            for name, knobs in section.options.items():
                for knob, d in knobs.items():
                    if distributions.is_searched(d):
                        lines.append(f"  {name}.{knob}: {_human(d)}")
        lines += [f"param_groups.{k}: {_human(d)}" for k, d in self.groups.items() if distributions.is_searched(d)]
        return lines

    def rejections(self, ctx: Any) -> list[str]:
        """What the builders will reject at this training budget (``BuildContext``).

        Tries every combination of each schedule's bounding knob values. Returns one note
        per schedule where some sampled points will be rejected (those trials fail, with the
        reason); raises ``ConfigError`` when a schedule rejects every point, since then the
        config itself cannot work.
        """
        notes = []
        for name, full in self.schedule.options.items():
            comp = SCHEDULES[name]
            combos = _combinations(full) if comp.budget else None
            if not combos:
                continue
            failures = [(values, found) for values in combos if (found := comp.budget(values, ctx))]
            if not failures:
                continue
            values, (knob, message) = failures[0]
            key = f"space.schedule.{name}.{knob}"
            budget = f"{ctx.epochs} epochs of {ctx.steps_per_epoch} steps"
            if len(failures) == len(combos):
                raise ConfigError(key, values[knob], f"{message} (at {budget}, for every point of the space)")
            searched = {k: values[k] for k in sorted(full) if distributions.is_searched(full[k])}
            notes.append(f"{key}: some points the sampler can choose are rejected at {budget}, e.g. {searched}: "
                         f"{message}; such trials fail with that reason")
        return notes


def _check_schedule_rules(key: str, optimizer: Section, schedule: Section) -> None:
    """Refuse a space where a variant could be sampled with a schedule it cannot run under
    (a schedule-free optimizer with any lr schedule, muon with one-cycle's momentum cycling),
    trying every combination of each schedule's bounding knob values."""
    for opt_name in optimizer.options:
        rule = VARIANTS[opt_name].schedule_rule
        if rule is None:
            continue
        for name, full in schedule.options.items():
            combos = _combinations(full) or [{k: d.values()[0] for k, d in full.items()}]
            for values in combos:
                found = rule({"name": name, **values})
                if found:
                    knob, message = found
                    where, value = (f"{key}.schedule.{name}.{knob}", values[knob]) if knob else (f"{key}.schedule", name)
                    raise ConfigError(where, value, f"{message} (optimizer {opt_name})")


def _momentum_notes(key: str, optimizer: Section, schedule: Section) -> list[str]:
    """A momentum / beta1 knob the config sets, under a schedule that replaces it: an error
    when every schedule choice replaces it (it would do nothing), else a note."""
    reach = {_overrides(name, full) for name, full in schedule.options.items()}
    notes = []
    for name, given in optimizer.given.items():
        knob = MOMENTUM_KNOB.get(name)
        if knob not in given or reach == {"never"}:
            continue
        where = f"{key}.optimizer.{name}.{knob}"
        if reach == {"always"}:
            raise ConfigError(where, _spec(optimizer.options[name][knob]),
                              "one-cycle's cycle_momentum replaces it (it runs from max_momentum to base_momentum "
                              "and back); search space.schedule.onecycle.base_momentum / max_momentum instead, or "
                              "set cycle_momentum: false")
        notes.append(f"{where} is searched only in trials whose schedule keeps it: one-cycle with cycle_momentum "
                     "replaces it with max_momentum")
    return notes


def _spec(d: distributions.Distribution) -> Any:
    values = d.values()
    return values[0] if isinstance(d, distributions.Constant) else values


def _describe(d: distributions.Distribution) -> str:
    if isinstance(d, distributions.OneMinus):
        return f"one_minus({_describe(d.inner)})"
    if isinstance(d, distributions.Searched):
        return repr(d.dist)
    return f"Constant({d.value!r})"


def _human(d: distributions.Distribution) -> str:
    """A distribution in words: ``1e-05 .. 0.1 (log)``, ``one of [1, 2]``, ``1 - (1e-3 .. 0.1 (log))``."""
    if isinstance(d, distributions.OneMinus):
        return f"1 - ({_human(d.inner)})"
    if isinstance(d, distributions.Searched):
        dist = d.dist
        if hasattr(dist, "choices"):
            return f"one of {list(dist.choices)}"
        step = f", step {dist.step:g}" if getattr(dist, "step", None) not in (None, 1) else ""
        return f"{dist.low:g} .. {dist.high:g}{' (log)' if dist.log else ''}{step}"
    return repr(d.value)
