"""A tunable number is a constant or an Optuna distribution; each becomes one ``trial.suggest_*``.

Spec forms (YAML):
  0.9                                   constant
  {low: 1.0e-4, high: 1.0e-2, log: true} float (int when low and high are both ints)
  {low: 1, high: 8, step: 1}            int with a step
  {choices: [1, 2, 5]}                  categorical
  {one_minus: SPEC}                     1 - x, x drawn from SPEC (beta1/beta2 near 1)

The ranges are Optuna's own ``FloatDistribution`` / ``IntDistribution`` /
``CategoricalDistribution``: Optuna checks them (``low <= high``, ``log`` needs ``low > 0``,
no ``step`` with ``log``) and its message becomes the one-line error. A range that Optuna
would silently shrink to fit its step (``[0, 1]`` with step 0.3 becomes ``[0, 0.9]``) is an
error too: a knob samples exactly the range written.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Union

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

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
class Searched:
    """One Optuna distribution, sampled under the knob's name."""

    dist: BaseDistribution

    def sample(self, trial: optuna.Trial, name: str) -> Any:
        d = self.dist
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(name, list(d.choices))
        if isinstance(d, IntDistribution):
            return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)

    def values(self) -> list:
        """The values that bound what the sampler can choose: a range's ends, every choice."""
        if isinstance(self.dist, CategoricalDistribution):
            return list(self.dist.choices)
        return [self.dist.low, self.dist.high]


@dataclass(frozen=True)
class OneMinus:
    inner: "Distribution"

    def sample(self, trial: optuna.Trial, name: str) -> float:
        return 1.0 - self.inner.sample(trial, f"{name}.one_minus")

    def values(self) -> list:
        return [1.0 - v for v in self.inner.values()]


Distribution = Union[Constant, Searched, OneMinus]


def is_searched(d: Distribution) -> bool:
    return not isinstance(d, Constant)


def _optuna(key: str, spec: Any, make) -> BaseDistribution:
    """Build an Optuna distribution; its checks' messages become ConfigErrors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. a range Optuna would shrink to fit its step
        try:
            return make()
        except (ValueError, UserWarning) as err:
            raise ConfigError(key, spec, str(err).strip().splitlines()[0]) from None


def _number(key: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, value, "must be a finite number")
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
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in inner.values()):
            raise ConfigError(f"{key}.one_minus", spec["one_minus"], "must be numeric")
        return OneMinus(inner)
    if "choices" in keys:
        extra = sorted(keys - {"choices"})
        if extra:
            raise ConfigError(f"{key}.{extra[0]}", spec[extra[0]], "unknown key beside 'choices'")
        choices = spec["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, _SCALARS) for c in choices):
            raise ConfigError(f"{key}.choices", choices, "must be a list of numbers, strings, booleans or null")
        return Searched(_optuna(f"{key}.choices", choices, lambda: CategoricalDistribution(choices)))
    allowed = {"low", "high", "log", "step"}
    extra = sorted(keys - allowed)
    if extra:
        raise ConfigError(f"{key}.{extra[0]}", spec[extra[0]],
                          f"unknown key; a distribution takes {sorted(allowed)}, 'choices' or 'one_minus'")
    missing = [k for k in ("low", "high") if k not in spec]
    if missing:
        raise ConfigError(key, spec, f"a range needs both 'low' and 'high' (missing '{missing[0]}')")
    low, high = _number(f"{key}.low", spec["low"]), _number(f"{key}.high", spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log", log, "must be true or false")
    step = spec.get("step")
    if step is not None:
        _number(f"{key}.step", step)
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        return Searched(_optuna(key, spec, lambda: IntDistribution(low, high, log=log, step=step or 1)))
    return Searched(_optuna(key, spec, lambda: FloatDistribution(
        float(low), float(high), log=log, step=None if step is None else float(step))))
