"""Learning-rate schedules, each built from ``torch.optim.lr_scheduler``, stepped per batch.

Lengths in the config are in epochs (floats allowed); recipes turn them into step counts
with ``Expr`` so exported code recomputes them from its own ``steps_per_epoch``/``epochs``.
"""

from __future__ import annotations

from typing import Any

from optsearch.spaces.components import Component, Knob, nonneg
from optsearch.spaces.recipe import Call, Expr, Ref, lit

SCHED = "torch.optim.lr_scheduler"
TOTAL = "epochs * steps_per_epoch"


def steps(epochs: float) -> str:
    """Source for a step count of ``epochs`` epochs, at least 1."""
    return f"max(1, round({lit(epochs)} * steps_per_epoch))"


def _start_factor(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 else "must be in (0, 1]"


def with_warmup(main: Call, p: dict) -> Call:
    """Prefix ``main`` with a linear warmup of ``p['warmup_epochs']`` (none when 0)."""
    if not p.get("warmup_epochs"):
        return main
    w = steps(p["warmup_epochs"])
    warm = Call(
        f"{SCHED}.LinearLR",
        (Ref("optimizer"),),
        {"start_factor": p["warmup_start_factor"], "end_factor": 1.0, "total_iters": Expr(w)},
    )
    return Call(f"{SCHED}.SequentialLR", (Ref("optimizer"),), {"schedulers": [warm, main], "milestones": [Expr(w)]})


def _constant(p: dict, ctx: Any, opt: dict) -> Call:
    main = Call(f"{SCHED}.ConstantLR", (Ref("optimizer"),), {"factor": 1.0, "total_iters": 0})
    return with_warmup(main, p)


def _cosine(p: dict, ctx: Any, opt: dict) -> Call:
    t_max = TOTAL if not p["warmup_epochs"] else f"max(1, {TOTAL} - {steps(p['warmup_epochs'])})"
    main = Call(f"{SCHED}.CosineAnnealingLR", (Ref("optimizer"),), {"T_max": Expr(t_max), "eta_min": p["eta_min"]})
    return with_warmup(main, p)


_WARMUP = {
    "warmup_epochs": Knob(0, nonneg, "linear warmup length in epochs (0: none)"),
    "warmup_start_factor": Knob(0.01, _start_factor, "lr multiplier at the first warmup step"),
}

SCHEDULES: dict[str, Component] = {
    "constant": Component("constant", {**_WARMUP}, _constant, "constant lr, optional linear warmup"),
    "cosine": Component(
        "cosine",
        {**_WARMUP, "eta_min": Knob(0.0, nonneg, "final lr (absolute)")},
        _cosine,
        "cosine annealing to eta_min over the whole run, optional linear warmup",
    ),
}

