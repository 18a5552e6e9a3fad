"""Optimizer variants, each one ``torch.optim`` class with the exact semantics of its paper.

- ``sgd``: SGD with momentum (heavy ball or Nesterov); weight decay is L2 (added to the grad).
- ``adam_l2``: Adam with coupled L2 decay (``torch.optim.Adam(weight_decay=...)``).
- ``adamw``: Adam with decoupled decay (``torch.optim.AdamW``), Loshchilov & Hutter.
- ``amsgrad``: max of past second moments (Reddi et al.), decoupled (AdamW) or coupled (Adam).
- ``nadamw``: NAdam with decoupled decay (``torch.optim.NAdam(decoupled_weight_decay=True)``).

Weight decay reaches the optimizer through the param groups (``groups.param_groups`` gives
every group its own ``weight_decay``: the knob's value, or 0 for biases and norm parameters
when ``no_decay_bias_norm``); every torch optimizer here reads ``weight_decay`` per group.
The constructor's ``weight_decay`` is the same value, written for the reader.

``weight_decay_norm`` (AdamW paper, sec. B.1): when set, weight_decay =
weight_decay_norm * sqrt(batch_size / (train_size * epochs)), so decay is comparable across
budgets.

``wd_schedule`` (decoupled variants only):

- ``coupled`` (torch's default): each step multiplies the weights by ``1 - lr_t * wd``, so the
  decay follows the lr schedule (SGDR, one-cycle, cosine all shrink it with the lr).
- ``constant``: each step multiplies the weights by ``1 - lr * wd``, ``lr`` being the group's
  unscheduled lr (the ``lr`` knob times its group multiplier; for one-cycle, its max_lr):
  the decay a constant schedule would give, whatever the schedule does. ``hold_weight_decay``
  sets torch's own decay to 0 and applies this multiplication in a step pre-hook, at the
  point of the step where torch applies decoupled decay (before the update).

With L2 decay (``sgd``, ``adam_l2``, ``amsgrad`` with ``decoupled: false``) the decay is a
gradient term that passes through momentum and Adam's scaling, so there is no single decay
rate to hold: ``wd_schedule: constant`` is rejected there.
"""

from __future__ import annotations

import math
from typing import Any

from optsearch.spaces.components import (
    Component,
    Knob,
    boolean,
    nonneg,
    one_of,
    positive,
    unit_left_open,
)
from optsearch.spaces.recipe import Call, Ref


def hold_weight_decay(optimizer):
    """Hold decoupled weight decay at a constant rate, whatever the lr schedule does.

    For each group, ``held_decay = lr * weight_decay`` with the group's lr as it is now
    (before any scheduler touches it); torch's own decay is switched off
    (``weight_decay = 0``) and a step pre-hook multiplies every parameter that has a
    gradient by ``1 - held_decay``: torch's decoupled decay ``p *= 1 - lr_t * wd``, applied
    at the same point of the step (before the update) with ``lr_t`` held at the group's lr.
    Call it on a fresh optimizer, before creating the scheduler.
    """
    import torch

    for group in optimizer.param_groups:
        group["held_decay"] = group["lr"] * group["weight_decay"]
        group["weight_decay"] = 0.0

    def decay(opt, args, kwargs):
        with torch.no_grad():
            for group in opt.param_groups:
                if group["held_decay"]:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.mul_(1.0 - group["held_decay"])

    optimizer.register_step_pre_hook(decay)
    return optimizer


def _optional_nonneg(v: Any) -> str | None:
    return None if v is None else nonneg(v)


def _l2_only(v: Any) -> str | None:
    if v == "coupled":
        return None
    return ("must be 'coupled': L2 decay goes through the gradient (momentum, Adam's scaling), "
            "so there is no decay rate to hold constant; use a decoupled variant (adamw, nadamw, "
            "amsgrad with decoupled: true)")


_COMMON = {
    "weight_decay_norm": Knob(None, _optional_nonneg, "normalized decay; overrides weight_decay when set"),
}
_DECOUPLED_SCHEDULE = {
    "wd_schedule": Knob("coupled", one_of("coupled", "constant"),
                        "coupled: decay lr_t*wd follows the lr schedule (torch); constant: held at lr*wd"),
}
_L2_SCHEDULE = {"wd_schedule": Knob("coupled", _l2_only, "L2 decay always follows the lr")}
_ADAM = {
    "lr": Knob(1e-3, positive),
    "beta1": Knob(0.9, unit_left_open),
    "beta2": Knob(0.999, unit_left_open),
    "eps": Knob(1e-8, positive, "up to 1: large eps moves Adam towards SGD+momentum"),
}


def effective_weight_decay(p: dict, ctx: Any) -> float:
    """The decay the optimizer gets: plain, or normalized by the training budget."""
    if p.get("weight_decay_norm") is None:
        return p["weight_decay"]
    return p["weight_decay_norm"] * math.sqrt(ctx.batch_size / (ctx.train_size * ctx.epochs))


def _adam_kwargs(p: dict, ctx: Any) -> dict:
    return {
        "lr": p["lr"],
        "betas": (p["beta1"], p["beta2"]),
        "eps": p["eps"],
        "weight_decay": effective_weight_decay(p, ctx),
    }


def _held(call: Call, p: dict) -> Call:
    return Call(hold_weight_decay, (call,)) if p.get("wd_schedule") == "constant" else call


def _sgd(p: dict, ctx: Any) -> Call:
    return Call(
        "torch.optim.SGD",
        (Ref("params"),),
        {
            "lr": p["lr"],
            "momentum": p["momentum"],
            "dampening": p["dampening"],
            "weight_decay": effective_weight_decay(p, ctx),
            "nesterov": p["nesterov"],
        },
    )


def _adam_l2(p: dict, ctx: Any) -> Call:
    return Call("torch.optim.Adam", (Ref("params"),), {**_adam_kwargs(p, ctx), "amsgrad": False})


def _adamw(p: dict, ctx: Any) -> Call:
    return _held(Call("torch.optim.AdamW", (Ref("params"),), {**_adam_kwargs(p, ctx), "amsgrad": False}), p)


def _amsgrad(p: dict, ctx: Any) -> Call:
    cls = "torch.optim.AdamW" if p["decoupled"] else "torch.optim.Adam"
    return _held(Call(cls, (Ref("params"),), {**_adam_kwargs(p, ctx), "amsgrad": True}), p)


def _nadamw(p: dict, ctx: Any) -> Call:
    return _held(
        Call(
            "torch.optim.NAdam",
            (Ref("params"),),
            {**_adam_kwargs(p, ctx), "momentum_decay": p["momentum_decay"], "decoupled_weight_decay": True},
        ),
        p,
    )


def _sgd_consistency(v: dict) -> tuple[str, str] | None:
    if v["nesterov"] and (v["momentum"] <= 0 or v["dampening"] != 0):
        return "nesterov", "nesterov needs momentum > 0 and dampening = 0"
    return None


def _amsgrad_consistency(v: dict) -> tuple[str, str] | None:
    if v["wd_schedule"] == "constant" and not v["decoupled"]:
        return "wd_schedule", "wd_schedule: constant needs decoupled: true (L2 decay has no rate to hold)"
    return None


VARIANTS: dict[str, Component] = {
    "sgd": Component(
        "sgd",
        {
            "lr": Knob(0.1, positive),
            "momentum": Knob(0.9, unit_left_open),
            "nesterov": Knob(False, boolean),
            "dampening": Knob(0.0, unit_left_open),
            "weight_decay": Knob(5e-4, nonneg, "L2: added to the gradient"),
            **_COMMON,
            **_L2_SCHEDULE,
        },
        _sgd,
        "SGD with momentum; Nesterov optional; L2 weight decay",
        consistency=_sgd_consistency,
    ),
    "adam_l2": Component(
        "adam_l2",
        {
            **_ADAM,
            "weight_decay": Knob(0.0, nonneg, "L2: coupled, goes through the adaptive scaling"),
            **_COMMON,
            **_L2_SCHEDULE,
        },
        _adam_l2,
        "Adam with coupled L2 weight decay",
    ),
    "adamw": Component(
        "adamw",
        {**_ADAM, "weight_decay": Knob(1e-2, nonneg, "decoupled: p -= lr * wd * p"), **_COMMON, **_DECOUPLED_SCHEDULE},
        _adamw,
        "Adam with decoupled weight decay (Loshchilov & Hutter)",
    ),
    "amsgrad": Component(
        "amsgrad",
        {
            **_ADAM,
            "weight_decay": Knob(1e-2, nonneg, "decoupled (AdamW) or L2 (Adam), by 'decoupled'"),
            "decoupled": Knob(True, boolean, "true: AdamW(amsgrad=True); false: Adam(amsgrad=True)"),
            **_COMMON,
            **_DECOUPLED_SCHEDULE,
        },
        _amsgrad,
        "AMSGrad: running max of the second moment; decoupled (AdamW) or L2 (Adam) decay",
        consistency=_amsgrad_consistency,
    ),
    "nadamw": Component(
        "nadamw",
        {
            **_ADAM,
            "weight_decay": Knob(1e-2, nonneg, "decoupled"),
            "momentum_decay": Knob(4e-3, nonneg, "NAdam's psi"),
            **_COMMON,
            **_DECOUPLED_SCHEDULE,
        },
        _nadamw,
        "NAdam with decoupled weight decay (AlgoPerf baseline)",
    ),
}

# Which knob plays "momentum" for one-cycle momentum cycling.
MOMENTUM_KNOB = {"sgd": "momentum", "adam_l2": "beta1", "adamw": "beta1", "amsgrad": "beta1", "nadamw": "beta1"}
