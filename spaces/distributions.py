"""A tunable number is a constant or a distribution; each becomes one ``trial.suggest_*``.

Spec forms (YAML):
  0.9                                   constant
  {low: 1e-4, high: 1e-2, log: true}    float (int when low and high are both ints)
  {low: 1, high: 8, step: 1}            int with a step
  {choices: [1, 2, 5]}                  categorical
  {one_minus: SPEC}                     1 - x, x drawn from SPEC (beta1/beta2 near 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import optuna

from optsearch.errors import ConfigError

_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Constant:
    value: Any

    def sample(self, trial: optuna.Trial, name: str) -> Any:
        return self.value

    def values(self) -> list:
        return [self.value]


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def sample(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def values(self) -> list:
        return [self.low, self.high]


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def sample(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def values(self) -> list:
        return [self.low, self.high]


@dataclass(frozen=True)
class Categorical:
    choices: tuple

    def sample(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def values(self) -> list:
        return list(self.choices)


@dataclass(frozen=True)
class OneMinus:
    inner: "Distribution"

    def sample(self, trial: optuna.Trial, name: str) -> float:
        return 1.0 - self.inner.sample(trial, f"{name}.one_minus")

    def values(self) -> list:
        return [1.0 - v for v in self.inner.values()]


Distribution = Union[Constant, Float, Int, Categorical, OneMinus]


def _number(key: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}.{what}", value, "must be a finite number")
    return value


def parse(key: str, spec: Any) -> Distribution:
    """Parse one knob's spec; ``key`` is its dotted path, used in errors."""
    if isinstance(spec, _SCALARS):
        if isinstance(spec, float) and not math.isfinite(spec):
            raise ConfigError(key, spec, "must be a finite number")
        return Constant(spec)
    if isinstance(spec, list):
        raise ConfigError(key, spec, "a list is not a distribution; write {choices: [...]}")
    if not isinstance(spec, dict):
        raise ConfigError(key, spec, "must be a constant, {low, high, log}, {choices: [...]} or {one_minus: ...}")
    keys = set(spec)
    if keys == {"one_minus"}:
        inner = parse(f"{key}.one_minus", spec["one_minus"])
        bad = [v for v in inner.values() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if bad:
            raise ConfigError(f"{key}.one_minus", spec["one_minus"], "must be numeric")
        return OneMinus(inner)
    if "choices" in keys:
        extra = keys - {"choices"}
        if extra:
            k = sorted(extra)[0]
            raise ConfigError(f"{key}.{k}", spec[k], "unknown key beside 'choices'")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}.choices", choices, "must be a non-empty list")
        for c in choices:
            if not isinstance(c, _SCALARS):
                raise ConfigError(f"{key}.choices", choices, "choices must be numbers, strings, booleans or null")
        return Categorical(tuple(choices))
    allowed = {"low", "high", "log", "step"}
    extra = keys - allowed
    if extra:
        k = sorted(extra)[0]
        raise ConfigError(f"{key}.{k}", spec[k], f"unknown key; a distribution takes {sorted(allowed)}, 'choices' or 'one_minus'")
    for need in ("low", "high"):
        if need not in spec:
            raise ConfigError(key, spec, f"a range needs both 'low' and 'high' (missing '{need}')")
    low = _number(key, spec["low"], "low")
    high = _number(key, spec["high"], "high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log", log, "must be true or false")
    if low > high:
        raise ConfigError(f"{key}.low", low, f"is greater than high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{key}.low", low, "a log range needs low > 0")
    step = spec.get("step")
    if step is not None:
        step = _number(key, step, "step")
        if step <= 0:
            raise ConfigError(f"{key}.step", step, "must be positive")
        if log:
            raise ConfigError(f"{key}.step", step, "cannot be combined with log: true")
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        return Int(low, high, log, step or 1)
    return Float(float(low), float(high), log, None if step is None else float(step))
