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

# Names an Expr may use; each is bound when the expression is evaluated or exported
# (``optimizer`` only in scheduler recipes, where it is an argument of build_scheduler).
EXPR_NAMES = ("steps_per_epoch", "epochs", "optimizer")
_EXPR_GLOBALS = {"__builtins__": {}, "round": round, "max": max, "min": min, "int": int, "math": math}


@dataclass(frozen=True)
class Expr:
    """An expression over ``steps_per_epoch``, ``epochs`` (and ``optimizer``).

    Only built by this package from fixed text and numeric literals (``lit``), never
    from user strings.
    """

    src: str

    def eval(self, env: dict[str, Any]) -> Any:
        names = {k: env[k] for k in EXPR_NAMES if k in env}
        return eval(self.src, _EXPR_GLOBALS, names)  # noqa: S307


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
    """A call: ``target`` is a dotted path (``"torch.optim.AdamW"``) or a module-level
    function, which (like ``Fn``) has its source inlined into exported code."""

    target: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def _resolve(path: Any):
    if callable(path):
        return path
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


def render(node: Any, aliases: dict[str, str] | None = None, indent: int = 0, width: int = 88) -> str:
    """Python source for a recipe. Literals go through ``repr``: no string is spliced raw.

    A call that does not fit in ``width`` columns (starting ``indent`` columns in) is
    broken into one argument per line.
    """
    aliases = aliases or {}
    if isinstance(node, Call):
        target = node.target.__name__ if callable(node.target) else node.target
        for prefix, alias in aliases.items():
            if target.startswith(prefix + "."):
                target = alias + target[len(prefix):]
                break
        flat = [render(a, aliases, width=10**9) for a in node.args]
        flat += [f"{k}={render(v, aliases, width=10**9)}" for k, v in node.kwargs.items()]
        one_line = f"{target}({', '.join(flat)})"
        if indent + len(one_line) <= width:
            return one_line
        inner = indent + 4
        parts = [render(a, aliases, inner, width) for a in node.args]
        parts += [f"{k}={render(v, aliases, inner, width)}" for k, v in node.kwargs.items()]
        pad = " " * inner
        return f"{target}(\n" + "".join(f"{pad}{p},\n" for p in parts) + " " * indent + ")"
    if isinstance(node, Expr):
        return node.src
    if isinstance(node, Ref):
        return node.name
    if isinstance(node, Fn):
        if not node.kwargs:
            return node.func.__name__
        kw = ", ".join(f"{k}={render(v, aliases, width=10**9)}" for k, v in node.kwargs.items())
        return f"functools.partial({node.func.__name__}, {kw})"
    if isinstance(node, list):
        one_line = "[" + ", ".join(render(v, aliases, width=10**9) for v in node) + "]"
        if indent + len(one_line) <= width or len(node) < 2:
            return one_line
        inner = indent + 4
        return "[\n" + "".join(f"{' ' * inner}{render(v, aliases, inner, width)},\n" for v in node) + " " * indent + "]"
    if isinstance(node, tuple):
        inner = ", ".join(render(v, aliases, width=10**9) for v in node)
        return f"({inner},)" if len(node) == 1 else f"({inner})"
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k!r}: {render(v, aliases, width=10**9)}" for k, v in node.items()) + "}"
    if isinstance(node, float) and not math.isfinite(node):
        return f"float({str(node)!r})"
    if node is None or isinstance(node, (bool, int, float, str)):
        return repr(node)
    raise TypeError(f"cannot render {type(node).__name__} as source: {node!r}")


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
            if callable(n.target) and n.target not in found:
                found.append(n.target)
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
