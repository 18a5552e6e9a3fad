"""One trial's params as a self-contained Python module (needs torch, math, functools only, and
the library of a variant that is not torch's: ``schedulefree``).

The module is rendered from the same recipes ``build`` instantiates (``build.recipes``), with
the source of ``groups.param_groups`` and of every function or class a recipe references
(``noam_lambda``, ``hold_weight_decay``, ``MuonWithAdamW``) copied in by ``inspect.getsource``,
and a variant's usage note (schedule-free's train/eval modes) with its helpers. Every value is
written by ``repr`` (through ``recipe.render``); header text becomes comment lines with
line breaks and other unprintable characters escaped, after two fixed first lines (so not
even a ``coding:`` cookie can be smuggled in).
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

from optsearch.errors import ConfigError
from optsearch.spaces.build import BuildContext, recipes
from optsearch.spaces.optimizers import VARIANTS, decoupled, normalized_decay
from optsearch.spaces.recipe import Call, Expr, functions, render

ALIASES = {"torch.optim.lr_scheduler": "lr_scheduler"}
BUILD_KEYS = ("steps_per_epoch", "epochs", "batch_size", "train_size")


def comment(text: str) -> str:
    """``text`` as comment lines: one per line of text, unprintable characters escaped."""
    lines = []
    for line in str(text).splitlines() or [""]:
        safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
        lines.append(f"# {safe}".rstrip())
    return "\n".join(lines)


def context(build: Any, key: str = "build") -> BuildContext:
    """A ``BuildContext`` from a trial's ``build`` dict, checked."""
    if not isinstance(build, dict):
        raise ConfigError(key, build, f"must be a mapping with {list(BUILD_KEYS)}")
    for k in build:
        if k not in BUILD_KEYS:
            raise ConfigError(f"{key}.{k}", build[k], f"unknown key; allowed: {list(BUILD_KEYS)}")
    for k in ("steps_per_epoch", "epochs"):
        if k not in build:
            raise ConfigError(key, build, f"has no '{k}'")
    return BuildContext(**build).check(key)  # plain ints


def _source(func: Any) -> str:
    return textwrap.dedent(inspect.getsource(func)).rstrip() + "\n"


def _walk(node: Any):
    """Every node of a recipe tree."""
    yield node
    if isinstance(node, Call):
        children = [*node.args, *node.kwargs.values()]
    elif isinstance(node, (list, tuple)):
        children = list(node)
    elif isinstance(node, dict):
        children = list(node.values())
    else:
        children = []
    for child in children:
        yield from _walk(child)


def _modules(nodes) -> list[str]:
    """Top-level modules other than torch that the recipes call into by dotted path."""
    found = []
    for node in nodes:
        for n in _walk(node):
            if isinstance(n, Call) and isinstance(n.target, str):
                top = n.target.split(".")[0]
                if top != "torch" and top not in found:
                    found.append(top)
    return found


def to_python(params: dict, build: dict, header: str = "") -> str:
    """Source of a module with ``build_optimizer(model)`` and
    ``build_scheduler(optimizer, steps_per_epoch, epochs)`` for these params.

    ``build`` is the trial's budget (``steps_per_epoch``, ``epochs``, and for normalized
    weight decay ``batch_size``, ``train_size``); the scheduler's step counts are written as
    expressions over ``steps_per_epoch`` and ``epochs``, defaulting to the trial's. When the
    optimizer itself depends on them (a schedule-free warmup), ``build_optimizer`` takes them
    too: ``build_optimizer(model, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS)``.
    """
    ctx = context(build)
    resolved, r = recipes(params, ctx)
    opt = resolved["optimizer"]
    variant = VARIANTS[opt["name"]]
    extra = _modules(r)
    budget_args = any(isinstance(n, Expr) for node in (r.groups, r.optimizer) for n in _walk(node))

    funcs = []

    def need(f: Any) -> None:  # a function, after the helpers it lists in __helpers__
        for helper in getattr(f, "__helpers__", ()):
            need(helper)
        if f not in funcs:
            funcs.append(f)

    for node in r:
        for f in functions(node):
            need(f)
    for f in variant.helpers:
        need(f)

    needs = "Needs only torch." if not extra else f"Needs torch and {', '.join(extra)}."
    out = [
        "# Exported by optsearch: one trial's optimizer, param groups and per-batch lr schedule.",
        f"# {needs} Step the scheduler after every optimizer step (every batch).",
    ]
    if header:
        out.append(comment(header))
    if variant.usage:
        out += ["#", comment(variant.usage)]
    imports = len(out)  # the standard-library imports go here once the body is known
    out += [
        "",
        "import torch",
        "from torch.optim import lr_scheduler",
        *[f"import {m}" for m in extra],
        "",
        "# The trial's training budget; build_scheduler defaults to it.",
        f"STEPS_PER_EPOCH = {render(ctx.steps_per_epoch)}",
        f"EPOCHS = {render(ctx.epochs)}",
        "",
        "# The resolved params this module was rendered from (for reference).",
        f"PARAMS = {_render_params(resolved)}",
        "",
    ]
    for f in funcs:
        out += ["", _source(f)]
    wd_note = []
    if opt.get("weight_decay_norm") is not None:
        wd = normalized_decay(opt, ctx)
        wd_note = [
            "    # normalized weight decay: weight_decay_norm * sqrt(batch_size / (train_size * epochs))",
            f"    #   = {opt['weight_decay_norm']!r} * sqrt({ctx.batch_size!r} / ({ctx.train_size!r} * {ctx.epochs!r}))"
            f" = {wd!r}",
            ("    # a per-step decay rate: each group's weight_decay is this / its lr (lr_free_decay)" if decoupled(opt)
             else "    # the L2 coefficient"),
        ]
    out += [
        "",
        "def build_optimizer(model, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS):" if budget_args
        else "def build_optimizer(model):",
        '    """The optimizer over ``model``\'s parameters, in the trial\'s param groups."""',
        *wd_note,
        f"    params = {render(r.groups, ALIASES, indent=4)}",
        f"    return {render(r.optimizer, ALIASES, indent=4)}",
        "",
        "",
        "def build_scheduler(optimizer, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS):",
        '    """The lr scheduler; call ``step()`` after every optimizer step."""',
        f"    return {render(r.scheduler, ALIASES, indent=4)}",
        "",
    ]
    body = "\n".join(out[imports:])
    stdlib = [f"import {m}" for m in ("functools", "math") if f"{m}." in body]  # only what the code uses
    return "\n".join(out[:imports] + ([""] + stdlib if stdlib else []) + out[imports:])


def trial_header(study: str, number: int, state: str, value: Any, build: dict) -> str:
    """The header of an exported trial (the CLI's export and MLflow's copy alike)."""
    budget = ", ".join(f"{k}={build.get(k)!r}" for k in ("steps_per_epoch", "epochs", "batch_size", "train_size"))
    return f"study: {study!r}\ntrial: {number}  state: {state}  value: {value!r}\nbudget: {budget}"


def _render_params(resolved: dict) -> str:
    lines = ["{"]
    for section, values in resolved.items():
        lines.append(f"    {section!r}: {render(values)},")
    lines.append("}")
    return "\n".join(lines)
