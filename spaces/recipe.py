"""Recipes: plain data that both builds torch objects and renders as Python source.

A trial's optimizer and scheduler are first described as a tree of ``Call`` nodes
(``torch.optim.AdamW(params, lr=...)``), with ``Expr`` for quantities that depend on the
training length (``steps_per_epoch``, ``epochs``). ``instantiate`` makes the torch objects;
``render`` writes the same tree as code. One description, two outputs: the exported code
cannot drift from what the trial ran.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass, field
from typing import Any

# Names an Expr may use; each is bound when the expression is evaluated or exported.
EXPR_NAMES = ("steps_per_epoch", "epochs")
_EXPR_GLOBALS = {"__builtins__": {}, "round": round, "max": max, "min": min, "int": int, "math": math}


@dataclass(frozen=True)
class Expr:
    """An arithmetic expression over ``steps_per_epoch`` and ``epochs``.

    Only built by this package from numeric literals (``lit``), never from user strings.
    """

    src: str

    def eval(self, env: dict[str, Any]) -> Any:
        return eval(self.src, _EXPR_GLOBALS, {k: env[k] for k in EXPR_NAMES})  # noqa: S307


def lit(x: Any) -> str:
    """A literal for a number (the only values spliced into Expr source)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"not a number: {x!r}")
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"not finite: {x!r}")
    return repr(x)


@dataclass(frozen=True)
class Ref:
    """A name bound at build time: ``optimizer`` or ``params`` (the param groups)."""

    name: str


@dataclass(frozen=True)
class Fn:
    """A module-level function, passed by reference (``functools.partial`` when it has kwargs).

    Its source travels into exported code, so it must need nothing but ``math``.
    """

    func: Any
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    target: str  # dotted path: "torch.optim.AdamW"
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(node: Any, env: dict[str, Any]) -> Any:
    """Build the objects a recipe describes; ``env`` binds Refs and Expr names."""
    if isinstance(node, Call):
        args = [instantiate(a, env) for a in node.args]
        kwargs = {k: instantiate(v, env) for k, v in node.kwargs.items()}
        return _resolve(node.target)(*args, **kwargs)
    if isinstance(node, Expr):
        return node.eval(env)
    if isinstance(node, Ref):
        return env[node.name]
    if isinstance(node, Fn):
        kwargs = {k: instantiate(v, env) for k, v in node.kwargs.items()}
        return functools.partial(node.func, **kwargs) if kwargs else node.func
    if isinstance(node, list):
        return [instantiate(v, env) for v in node]
    if isinstance(node, tuple):
        return tuple(instantiate(v, env) for v in node)
    if isinstance(node, dict):
        return {k: instantiate(v, env) for k, v in node.items()}
    return node


def render(node: Any, aliases: dict[str, str] | None = None) -> str:
    """Python source for a recipe. Literals go through ``repr``: no string is spliced raw."""
    aliases = aliases or {}
    if isinstance(node, Call):
        target = node.target
        for prefix, alias in aliases.items():
            if target.startswith(prefix + "."):
                target = alias + target[len(prefix):]
                break
        parts = [render(a, aliases) for a in node.args]
        parts += [f"{k}={render(v, aliases)}" for k, v in node.kwargs.items()]
        return f"{target}({', '.join(parts)})"
    if isinstance(node, Expr):
        return node.src
    if isinstance(node, Ref):
        return node.name
    if isinstance(node, Fn):
        if not node.kwargs:
            return node.func.__name__
        kw = ", ".join(f"{k}={render(v, aliases)}" for k, v in node.kwargs.items())
        return f"functools.partial({node.func.__name__}, {kw})"
    if isinstance(node, list):
        return "[" + ", ".join(render(v, aliases) for v in node) + "]"
    if isinstance(node, tuple):
        inner = ", ".join(render(v, aliases) for v in node)
        return f"({inner},)" if len(node) == 1 else f"({inner})"
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k!r}: {render(v, aliases)}" for k, v in node.items()) + "}"
    if isinstance(node, float) and not math.isfinite(node):
        return f"float({str(node)!r})"
    return repr(node)


def functions(node: Any) -> list:
    """Every function a recipe references (for the exporter to inline their source)."""
    found: list = []

    def walk(n: Any) -> None:
        if isinstance(n, Fn):
            if n.func not in found:
                found.append(n.func)
            for v in n.kwargs.values():
                walk(v)
        elif isinstance(n, Call):
            for a in n.args:
                walk(a)
            for v in n.kwargs.values():
                walk(v)
        elif isinstance(n, (list, tuple)):
            for v in n:
                walk(v)
        elif isinstance(n, dict):
            for v in n.values():
                walk(v)

    walk(node)
    return found
