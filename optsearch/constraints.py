"""One validation vocabulary: small constraint objects that write their own messages.

Modelled on scikit-learn's ``utils/_param_validation.py``: a constraint says whether a
value satisfies it and describes itself in words, so every check in the project (the
config's sections, the search space's knobs, the trainers' options, the sampler and pruner
options read from Optuna's signatures) fails with the same kind of message::

    c.yaml: study.n_trials = 0: must be an integer >= 1

``check(key, value, constraint)`` raises the ``ConfigError``; ``constraint.message(value)``
returns the text (or None) for callers that collect problems.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, Iterable

from optsearch.errors import ConfigError


class Constraint(ABC):
    """A rule for one value. ``str(constraint)`` completes the sentence "must be ..."."""

    @abstractmethod
    def is_satisfied_by(self, value: Any) -> bool:
        """Whether ``value`` follows the rule."""

    @abstractmethod
    def __str__(self) -> str:
        """What the rule asks for, e.g. ``an integer >= 1``."""

    def message(self, value: Any) -> str | None:
        """None when ``value`` is fine, else ``must be <what the rule asks for>``."""
        return None if self.is_satisfied_by(value) else f"must be {self}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self}>"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(x: float) -> str:
    return repr(x) if isinstance(x, float) else str(x)


class Interval(Constraint):
    """A finite number (``kind="real"``, ints accepted) or an integer (``kind="int"``) in a
    range. ``closed``: which ends belong to it: ``both``, ``left``, ``right`` or ``neither``;
    a missing end (None) is unbounded."""

    def __init__(self, kind: str, low: float | None = None, high: float | None = None, closed: str = "both"):
        if kind not in ("int", "real"):
            raise ValueError(f"kind must be 'int' or 'real', not {kind!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"bad closed: {closed!r}")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def is_satisfied_by(self, value: Any) -> bool:
        if not (_is_int(value) if self.kind == "int" else _is_real(value)):
            return False
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        what = "an integer" if self.kind == "int" else "a number"
        low_in = self.closed in ("both", "left")
        high_in = self.closed in ("both", "right")
        if self.low is None and self.high is None:
            return what
        if self.high is None:
            return f"{what} {'>=' if low_in else '>'} {_fmt(self.low)}"
        if self.low is None:
            return f"{what} {'<=' if high_in else '<'} {_fmt(self.high)}"
        return f"{what} in {'[' if low_in else '('}{_fmt(self.low)}, {_fmt(self.high)}{']' if high_in else ')'}"


class Options(Constraint):
    """One of a fixed set of values (strings, numbers or booleans), compared by equality and
    type, so ``true`` is not ``1``."""

    def __init__(self, *allowed: Any):
        self.allowed = tuple(allowed)

    def is_satisfied_by(self, value: Any) -> bool:
        return any(value == a and type(value) is type(a) for a in self.allowed)

    def __str__(self) -> str:
        return f"one of {list(self.allowed)}"


class Boolean(Constraint):
    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, bool)

    def __str__(self) -> str:
        return "true or false"


class Text(Constraint):
    """A non-empty string."""

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def __str__(self) -> str:
        return "a non-empty string"


class Nullable(Constraint):
    """null (None), or what ``inner`` asks for."""

    def __init__(self, inner: Constraint):
        self.inner = inner

    def is_satisfied_by(self, value: Any) -> bool:
        return value is None or self.inner.is_satisfied_by(value)

    def __str__(self) -> str:
        return f"null or {self.inner}"


class AnyOf(Constraint):
    """Satisfied by any of ``constraints``."""

    def __init__(self, *constraints: Constraint):
        self.constraints = constraints

    def is_satisfied_by(self, value: Any) -> bool:
        return any(c.is_satisfied_by(value) for c in self.constraints)

    def __str__(self) -> str:
        return " or ".join(str(c) for c in self.constraints)


class ListOf(Constraint):
    """A list (or tuple) whose items follow ``item``; ``length`` fixes its length,
    ``min_length`` bounds it; ``increasing`` asks for strictly increasing items."""

    def __init__(self, item: Constraint, *, length: int | None = None, min_length: int = 0,
                 increasing: bool = False, example: str | None = None):
        self.item, self.length, self.min_length = item, length, min_length
        self.increasing, self.example = increasing, example

    def is_satisfied_by(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        if self.length is not None and len(value) != self.length:
            return False
        if len(value) < self.min_length or not all(self.item.is_satisfied_by(v) for v in value):
            return False
        return not self.increasing or all(a < b for a, b in zip(value, value[1:]))

    def __str__(self) -> str:
        size = (f"a list of {self.length}" if self.length is not None
                else "a non-empty list" if self.min_length == 1
                else f"a list of at least {self.min_length}" if self.min_length else "a list")
        order = ", strictly increasing," if self.increasing else ""
        text = f"{size}{order} of {_plural(self.item)}"
        return text + (f", e.g. {self.example}" if self.example else "")


class Rule(Constraint):
    """A rule that a library judges (a URL parser, say): ``func(value)`` returns None when the
    value is fine, else the whole message. ``description`` completes "must be ..."."""

    def __init__(self, func, description: str):
        self.func, self.description = func, description

    def is_satisfied_by(self, value: Any) -> bool:
        return self.func(value) is None

    def message(self, value: Any) -> str | None:
        return self.func(value)

    def __str__(self) -> str:
        return self.description


def _plural(c: Constraint) -> str:
    """'an integer >= 1' -> 'integers >= 1' (for list descriptions)."""
    text = str(c)
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a non-empty string", "non-empty strings")):
        if text.startswith(one):
            return many + text[len(one):]
    return f"items that are {text}"


# Shared instances for the common rules.
POSITIVE = Interval("real", 0, None, closed="neither")
NONNEGATIVE = Interval("real", 0, None)
UNIT_OPEN = Interval("real", 0, 1, closed="neither")  # (0, 1)
UNIT_LEFT_CLOSED = Interval("real", 0, 1, closed="left")  # [0, 1)
UNIT_RIGHT_CLOSED = Interval("real", 0, 1, closed="right")  # (0, 1]
UNIT = Interval("real", 0, 1)  # [0, 1]
BOOLEAN = Boolean()
TEXT = Text()


def at_least(n: int) -> Interval:
    """An integer >= n."""
    return Interval("int", n, None)


def check(key: str, value: Any, constraint: Constraint) -> Any:
    """``value`` when it satisfies ``constraint``; else ``ConfigError`` naming ``key``."""
    message = constraint.message(value)
    if message:
        raise ConfigError(key, value, message)
    return value


def check_section(key: str, raw: Any, schema: dict[str, tuple[Any, Constraint]],
                  ignore: Iterable[str] = ()) -> dict[str, Any]:
    """A mapping checked against ``{name: (default, constraint)}``, defaults filled in.

    Unknown names are errors (naming the allowed ones); names in ``ignore`` are skipped.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "must be a mapping")
    ignore = set(ignore)
    for k, v in raw.items():
        if k not in schema and k not in ignore:
            raise ConfigError(f"{key}.{k}", v, f"unknown key; allowed: {sorted(schema)}")
    return {k: check(f"{key}.{k}", raw.get(k, default), c) for k, (default, c) in schema.items()}
