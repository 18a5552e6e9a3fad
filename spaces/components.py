"""Knobs and components: the vocabulary that optimizer variants and schedules share.

A component (an optimizer variant, a schedule) declares its knobs, each with a default
and a validity check, and a ``recipe`` that turns resolved knob values into ``Call`` trees.
Registries are plain dicts; adding a variant is adding one entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


def positive(v: Any) -> str | None:
    return None if _num(v) and v > 0 else "must be a number > 0"


def nonneg(v: Any) -> str | None:
    return None if _num(v) and v >= 0 else "must be a number >= 0"


def unit_open(v: Any) -> str | None:
    return None if _num(v) and 0 < v < 1 else "must be in (0, 1)"


def unit_closed(v: Any) -> str | None:
    return None if _num(v) and 0 <= v <= 1 else "must be in [0, 1]"


def unit_left_open(v: Any) -> str | None:
    return None if _num(v) and 0 <= v < 1 else "must be in [0, 1)"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def positive_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "must be an integer >= 1"


def increasing_fractions(v: Any) -> str | None:
    """A non-empty list of fractions of training, each in (0, 1), strictly increasing."""
    ok = (
        isinstance(v, (list, tuple))
        and len(v) > 0
        and all(_num(x) and 0 < x < 1 for x in v)
        and all(a < b for a, b in zip(v, v[1:]))
    )
    return None if ok else "must be a non-empty list of increasing fractions in (0, 1), e.g. [0.5, 0.75]"


def one_of(*allowed: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in allowed else f"must be one of {list(allowed)}"

    return check


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Knob:
    default: Any
    check: Callable[[Any], str | None]
    doc: str = ""
    # A list-valued knob (e.g. step milestones): a YAML list is its constant value, not an
    # error; it cannot be searched (Optuna's categorical choices must be scalars).
    is_list: bool = False


@dataclass(frozen=True)
class Component:
    name: str
    knobs: dict[str, Knob]
    recipe: Callable[..., Any]
    doc: str = ""
    # Cross-knob checks on resolved values: (values) -> (knob, message) or None.
    consistency: Callable[[dict], tuple[str, str] | None] | None = field(default=None)
    # Checks that need the training budget: (values, BuildContext) -> (knob, message) or None.
    budget: Callable[[dict, Any], tuple[str, str] | None] | None = field(default=None)

    def defaults(self) -> dict[str, Any]:
        return {k: knob.default for k, knob in self.knobs.items()}
