"""Learning-rate schedules, each built from ``torch.optim.lr_scheduler``, stepped per batch.

Lengths in the config are in epochs (floats allowed); recipes turn them into step counts
with ``Expr`` so exported code recomputes them from its own ``steps_per_epoch``/``epochs``.
``T`` below is the run's length in optimizer steps, ``epochs * steps_per_epoch``; the lr
used by step k (0-based) is what the scheduler holds after k calls to ``step()``.

- ``constant``: ``ConstantLR(factor=1)``; optional linear warmup.
- ``step``: ``MultiStepLR``: lr * gamma**i after the i-th milestone; milestones are
  fractions of T (step ``round(f * T)``); optional linear warmup.
- ``cosine``: cosine annealing from each group's lr to ``eta_min`` times it over T (minus
  the warmup): ``LambdaLR(cosine_factor)``; optional linear warmup (``LinearLR`` then the
  main schedule, via ``SequentialLR``).
- ``sgdr``: cosine annealing with warm restarts (Loshchilov & Hutter), ``LambdaLR(sgdr_factor)``:
  cycles of ``T_0`` epochs, then ``T_0 * T_mult``, ...; restarts at the epochs the config names,
  T_0, T_0 (1 + T_mult), T_0 (1 + T_mult + T_mult^2), ..., i.e. at step
  ``round(epoch * steps_per_epoch)``, and each cycle anneals to ``eta_min`` by its last step.

``eta_min`` is relative: the lr at the bottom of the cosine is ``eta_min`` times each group's
lr (0: anneal to zero; 0.01: to 1% of the lr), so groups with lower lrs (``layer_decay``) never
anneal upwards. torch's ``CosineAnnealingLR`` takes one absolute ``eta_min`` for every group
and ``CosineAnnealingWarmRestarts`` only whole-step cycles that repeat ``T_0 * T_mult**i``
(their restarts drift away from the epochs named), so both are ``LambdaLR`` over a pure
function of the step (``cosine_factor``, ``sgdr_factor``; nanoGPT's ``get_lr`` style).
- ``onecycle``: ``OneCycleLR`` (Smith): max_lr is each group's lr (so head and layer-wise
  multipliers carry over), starting at max_lr / div_factor, peaking at step
  ``pct_start * T - 1``, ending at max_lr / (div_factor * final_div_factor); with
  ``cycle_momentum`` the optimizer's momentum (SGD) or beta1 (Adam family) runs from
  ``max_momentum`` down to ``base_momentum`` at the peak and back: it replaces the
  optimizer's own momentum/beta1 knob.
- ``noam``: ``LambdaLR(noam_lambda)`` (Vaswani et al.): linear warmup to lr over
  ``warmup_epochs``, then lr * sqrt(warmup / s) (inverse square root), s = step + 1.
"""

from __future__ import annotations

import math
from typing import Any

from optsearch.constraints import (
    BOOLEAN,
    NONNEGATIVE,
    POSITIVE,
    UNIT,
    UNIT_LEFT_CLOSED,
    UNIT_OPEN,
    UNIT_RIGHT_CLOSED,
    ListOf,
    Options,
    at_least,
)
from optsearch.spaces.components import Component, Knob
from optsearch.spaces.recipe import Call, Expr, Fn, Ref, lit

SCHED = "torch.optim.lr_scheduler"
TOTAL = "epochs * steps_per_epoch"


def steps(epochs: float) -> str:
    """Source for a step count of ``epochs`` epochs, at least 1."""
    return f"max(1, round({lit(epochs)} * steps_per_epoch))"


def warmup_steps(epochs: float) -> str:
    """Source for a warmup of ``epochs`` epochs, cut to end one step before the run does.

    So a config tuned for long runs still trains when shortened (``--set trainer.epochs=1``):
    a warmup as long as the run or longer becomes a warmup over all but its last step.
    """
    return f"min({steps(epochs)}, max(1, {TOTAL} - 1))"


def n_steps(src: str, ctx: Any) -> int:
    """The value of a step-count expression (``steps``, ``warmup_steps``) for a budget."""
    return Expr(src).eval({"steps_per_epoch": ctx.steps_per_epoch, "epochs": ctx.epochs})


def cosine_factor(step, total, eta_min=0.0):
    """Cosine annealing's lr multiplier at step ``step`` of ``total`` (SGDR's eq. 5 without
    restarts): ``eta_min + (1 - eta_min) * (1 + cos(pi * step / total)) / 2``, from 1 at
    step 0 down to ``eta_min`` (a fraction of the lr) at ``total``, and held there after."""
    return eta_min + (1 - eta_min) * (1 + math.cos(math.pi * min(step, total) / total)) / 2


def sgdr_factor(step, T_0, T_mult, steps_per_epoch, eta_min=0.0):
    """SGDR's lr multiplier at optimizer step ``step`` (Loshchilov & Hutter 2017, eq. 5).

    Cycle i covers epochs ``[T_0 (1 + ... + T_mult**(i-1)), T_0 (1 + ... + T_mult**i))``;
    its ends are the steps ``round(epoch * steps_per_epoch)`` (each cycle at least one step
    long). At step t of a cycle of L steps the multiplier is
    ``eta_min + (1 - eta_min) * (1 + cos(pi * t / L)) / 2``: 1 at a restart, near ``eta_min``
    at the cycle's last step.
    """
    start, end_epoch, length = 0, 0.0, T_0
    while True:
        end_epoch += length
        end = max(start + 1, round(end_epoch * steps_per_epoch))
        if step < end:
            return eta_min + (1 - eta_min) * (1 + math.cos(math.pi * (step - start) / (end - start))) / 2
        start, length = end, length * T_mult


def noam_lambda(step, warmup_steps):
    """Noam lr multiplier (Vaswani et al. 2017), normalised to peak at 1.

    With s = step + 1: s / warmup_steps while warming up, then sqrt(warmup_steps / s).
    The original d_model**-0.5 * min(s**-0.5, s * warmup**-1.5) is this times
    (d_model * warmup_steps)**-0.5; here the optimizer's lr is the peak lr.
    """
    s = step + 1
    return min(s / warmup_steps, math.sqrt(warmup_steps / s))


def with_warmup(main: Call, p: dict) -> Call:
    """Prefix ``main`` with a linear warmup of ``p['warmup_epochs']`` (none when 0)."""
    if not p.get("warmup_epochs"):
        return main
    w = warmup_steps(p["warmup_epochs"])
    warm = Call(
        f"{SCHED}.LinearLR",
        (Ref("optimizer"),),
        {"start_factor": p["warmup_start_factor"], "end_factor": 1.0, "total_iters": Expr(w)},
    )
    return Call(f"{SCHED}.SequentialLR", (Ref("optimizer"),), {"schedulers": [warm, main], "milestones": [Expr(w)]})


def _constant(p: dict, ctx: Any, opt: dict) -> Call:
    main = Call(f"{SCHED}.ConstantLR", (Ref("optimizer"),), {"factor": 1.0, "total_iters": 0})
    return with_warmup(main, p)


def _step(p: dict, ctx: Any, opt: dict) -> Call:
    # Inside SequentialLR the main schedule counts from the end of the warmup.
    shift = f" - {warmup_steps(p['warmup_epochs'])}" if p["warmup_epochs"] else ""  # the warmup as cut
    milestones = [Expr(f"round({lit(f)} * {TOTAL}){shift}") for f in p["milestones"]]
    main = Call(f"{SCHED}.MultiStepLR", (Ref("optimizer"),), {"milestones": milestones, "gamma": p["gamma"]})
    return with_warmup(main, p)


def _cosine(p: dict, ctx: Any, opt: dict) -> Call:
    t_max = TOTAL if not p["warmup_epochs"] else f"max(1, {TOTAL} - {warmup_steps(p['warmup_epochs'])})"
    factor = Fn(cosine_factor, {"total": Expr(t_max), "eta_min": p["eta_min"]})
    return with_warmup(Call(f"{SCHED}.LambdaLR", (Ref("optimizer"),), {"lr_lambda": factor}), p)


def _sgdr(p: dict, ctx: Any, opt: dict) -> Call:
    factor = Fn(sgdr_factor, {"T_0": p["T_0"], "T_mult": p["T_mult"], "steps_per_epoch": Expr("steps_per_epoch"),
                              "eta_min": p["eta_min"]})
    return Call(f"{SCHED}.LambdaLR", (Ref("optimizer"),), {"lr_lambda": factor})


def _onecycle(p: dict, ctx: Any, opt: dict) -> Call:
    return Call(
        f"{SCHED}.OneCycleLR",
        (Ref("optimizer"),),
        {
            # Each group's lr (the lr knob times its head / layer multiplier) is its peak.
            "max_lr": Expr('[group["lr"] for group in optimizer.param_groups]'),
            "total_steps": Expr(TOTAL),
            "pct_start": float(p["pct_start"]),
            "anneal_strategy": p["anneal_strategy"],
            "cycle_momentum": p["cycle_momentum"],
            "base_momentum": p["base_momentum"],
            "max_momentum": p["max_momentum"],
            "div_factor": p["div_factor"],
            "final_div_factor": p["final_div_factor"],
            "three_phase": p["three_phase"],
        },
    )


def _noam(p: dict, ctx: Any, opt: dict) -> Call:
    return Call(
        f"{SCHED}.LambdaLR",
        (Ref("optimizer"),),
        {"lr_lambda": Fn(noam_lambda, {"warmup_steps": Expr(steps(p["warmup_epochs"]))})},
    )


# ---- checks that need the budget --------------------------------------------------------


def _warmup_budget(p: dict, ctx: Any) -> tuple[str, str] | None:
    if p.get("warmup_epochs") and ctx.epochs * ctx.steps_per_epoch < 2:
        return "warmup_epochs", "a warmup needs a run of at least 2 steps"
    return None


def _step_budget(p: dict, ctx: Any) -> tuple[str, str] | None:
    total = ctx.epochs * ctx.steps_per_epoch
    warm = n_steps(warmup_steps(p["warmup_epochs"]), ctx) if p["warmup_epochs"] else 0
    at = [round(f * total) for f in p["milestones"]]
    if at[0] <= warm:
        return "milestones", f"the first milestone (step {at[0]}) must come after the warmup ({warm} steps)"
    if len(set(at)) < len(at):
        return "milestones", f"milestones fall on the same step ({at}) for a run of {total} steps"
    return _warmup_budget(p, ctx)


def _onecycle_budget(p: dict, ctx: Any) -> tuple[str, str] | None:
    total = ctx.epochs * ctx.steps_per_epoch
    # torch's phases end at pct_start * T - 1 (and 2 pct_start T - 2): each must be > 0
    if float(p["pct_start"]) * total - 1 <= 0 or (p["three_phase"] and 2 * float(p["pct_start"]) * total - 2 >= total - 1):
        return "pct_start", f"leaves an empty phase in a run of {total} steps"
    return None


def _onecycle_consistency(v: dict) -> tuple[str, str] | None:
    if v["base_momentum"] > v["max_momentum"]:
        return "base_momentum", "base_momentum must be <= max_momentum"
    if v["three_phase"] and v["pct_start"] >= 0.5:
        return "pct_start", "three_phase needs pct_start < 0.5 (the first two phases take 2 * pct_start)"
    return None


_WARMUP = {
    "warmup_epochs": Knob(0, NONNEGATIVE, "linear warmup length in epochs (0: none)"),
    "warmup_start_factor": Knob(0.01, UNIT_RIGHT_CLOSED, "lr multiplier at the first warmup step"),
}

SCHEDULES: dict[str, Component] = {
    "constant": Component(
        "constant", {**_WARMUP}, _constant, "constant lr, optional linear warmup", budget=_warmup_budget
    ),
    "step": Component(
        "step",
        {
            "milestones": Knob([0.5, 0.75], ListOf(UNIT_OPEN, min_length=1, increasing=True, example="[0.5, 0.75]"),
                               "fractions of training where lr *= gamma", is_list=True),
            "gamma": Knob(0.1, UNIT_OPEN, "decay factor at each milestone"),
            **_WARMUP,
        },
        _step,
        "step decay by gamma at fractions of training (MultiStepLR), optional linear warmup",
        budget=_step_budget,
    ),
    "cosine": Component(
        "cosine",
        {**_WARMUP, "eta_min": Knob(0.0, UNIT, "final lr, as a fraction of each group's lr")},
        _cosine,
        "cosine annealing to eta_min over the whole run, optional linear warmup",
        budget=_warmup_budget,
    ),
    "sgdr": Component(
        "sgdr",
        {
            "T_0": Knob(1.0, POSITIVE, "first cycle length in epochs"),
            "T_mult": Knob(2, at_least(1), "each cycle is T_mult times longer than the last"),
            "eta_min": Knob(0.0, UNIT, "lr at the end of each cycle, as a fraction of each group's lr"),
        },
        _sgdr,
        "cosine annealing with warm restarts (CosineAnnealingWarmRestarts), stepped per batch",
    ),
    "onecycle": Component(
        "onecycle",
        {
            "pct_start": Knob(0.3, UNIT_OPEN, "fraction of the run spent raising the lr"),
            "div_factor": Knob(25.0, POSITIVE, "initial lr = max_lr / div_factor (max_lr: the optimizer's lr)"),
            "final_div_factor": Knob(1e4, POSITIVE, "final lr = initial lr / final_div_factor"),
            "anneal_strategy": Knob("cos", Options("cos", "linear")),
            "three_phase": Knob(False, BOOLEAN, "Smith's original: up, symmetric down, then annihilate"),
            "cycle_momentum": Knob(True, BOOLEAN, "cycle momentum (SGD) / beta1 (Adam family) inversely to lr; replaces the optimizer's own"),
            "base_momentum": Knob(0.85, UNIT_LEFT_CLOSED, "momentum / beta1 at the lr peak"),
            "max_momentum": Knob(0.95, UNIT_LEFT_CLOSED, "momentum / beta1 at the start and the end"),
        },
        _onecycle,
        "one-cycle policy (OneCycleLR), peak lr = the optimizer's lr per param group",
        consistency=_onecycle_consistency,
        budget=_onecycle_budget,
    ),
    "noam": Component(
        "noam",
        {"warmup_epochs": Knob(1.0, POSITIVE, "linear warmup to the peak (the optimizer's lr), in epochs")},
        _noam,
        "linear warmup then inverse square root decay (LambdaLR)",
        budget=_warmup_budget,
    ),
}


# ---- where a trial may be judged ---------------------------------------------------------


def judgeable_epochs(schedule: dict, epochs: int) -> list[int]:
    """The epoch reports at which a trial on this (resolved) schedule may be compared with
    others: never during a warmup (``epoch > warmup_epochs``); SGDR only at the end of each
    cycle (the last report at or before the cycle's end, where the lr is near its bottom;
    never right after a restart, where it is at its peak) and at the run's end; one-cycle
    only once its annealing phase has begun (``epoch >= pct_start * epochs``). Accuracy dips
    at warm restarts and under one-cycle's high lr, and rankings flip during the final
    decay (Wen et al. 2025): comparing trials elsewhere prunes good ones.
    """
    name = schedule["name"]
    if name == "sgdr":
        ends, at, length = set(), 0.0, float(schedule["T_0"])
        while at + length < epochs:
            at += length
            if math.floor(at + 1e-9) >= 1:
                ends.add(math.floor(at + 1e-9))
            length *= schedule["T_mult"]
        return sorted(ends | {epochs})
    if name == "onecycle":
        first = math.ceil(schedule["pct_start"] * epochs - 1e-9)
        return list(range(max(1, first), epochs + 1))
    warmup = schedule.get("warmup_epochs") or 0
    return [e for e in range(1, epochs + 1) if e > warmup]
