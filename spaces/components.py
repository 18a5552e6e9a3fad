"""Knobs and components: the vocabulary that optimizer variants and schedules share.

A component (an optimizer variant, a schedule) declares its knobs, each with a default, a
constraint (``optsearch.constraints``: the same objects that check the rest of the config)
and a one-line doc, and a ``recipe`` that turns resolved knob values into ``Call`` trees.
Registries are plain dicts; adding a variant is adding one entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from optsearch.constraints import Constraint


@dataclass(frozen=True)
class Knob:
    default: Any
    constraint: Constraint
    doc: str = ""
    # A list-valued knob (e.g. step milestones): a YAML list is its constant value, not an
    # error; it cannot be searched (Optuna's categorical choices must be scalars).
    is_list: bool = False

    def check(self, value: Any) -> str | None:
        """None when ``value`` is valid for this knob, else the message."""
        return self.constraint.message(value)


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
    # Optimizer variants only. A rule on the schedule this variant runs under: (resolved
    # schedule) -> (schedule knob or None, message) when they cannot be combined, else None.
    schedule_rule: Callable[[dict], tuple[str | None, str] | None] | None = field(default=None)
    # The param-groups recipe, for a variant that splits the model its own way:
    # (resolved params, BuildContext) -> Call over Ref("model"). None: ``groups.param_groups``.
    groups: Callable[[dict, Any], Any] | None = field(default=None)
    # () -> None when the library this variant is built from is importable, else the message.
    available: Callable[[], str | None] | None = field(default=None)
    # What exported code tells its reader about using this optimizer (comment lines), and the
    # functions it copies in for that (``inspect.getsource``; torch only).
    usage: str = ""
    helpers: tuple = ()

    def defaults(self) -> dict[str, Any]:
        return {k: knob.default for k, knob in self.knobs.items()}
