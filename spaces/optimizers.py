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

``weight_decay_norm`` (AdamW paper, sec. B.1): when set, it replaces ``weight_decay`` with
``lambda = weight_decay_norm * sqrt(batch_size / (train_size * epochs))``, so decay is
comparable across budgets. For the decoupled variants ``lambda`` is the paper's per-step
rate, independent of the lr: each step multiplies a decayed weight by ``1 - eta_t * lambda``
(``eta_t``: the schedule's multiplier, 1 at its peak), so every group gets torch's
``weight_decay = lambda / (group lr)``. For L2 variants ``lambda`` is the L2 coefficient.
The trainer must pass ``batch_size`` and ``train_size`` to ``ctx.build`` (else an error).

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

from optsearch.constraints import BOOLEAN, NONNEGATIVE, POSITIVE, UNIT_LEFT_CLOSED, Nullable, Options
from optsearch.errors import ConfigError
from optsearch.spaces.components import Component, Knob
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


_COMMON = {
    "weight_decay_norm": Knob(None, Nullable(NONNEGATIVE),
                              "normalized decay (AdamW paper, B.1); replaces weight_decay when set"),
    "wd_schedule": Knob("coupled", Options("coupled", "constant"),
                        "coupled: the decay follows the lr schedule (torch); constant: held at its peak rate"),
}
_ADAM = {
    "lr": Knob(1e-3, POSITIVE),
    "beta1": Knob(0.9, UNIT_LEFT_CLOSED),
    "beta2": Knob(0.999, UNIT_LEFT_CLOSED),
    "eps": Knob(1e-8, POSITIVE, "up to 1: large eps moves Adam towards SGD+momentum"),
}


def decoupled(p: dict) -> bool:
    """Whether these (resolved) variant params decay the weights directly (AdamW-style)
    rather than through an L2 term in the gradient."""
    return p["name"] in ("adamw", "nadamw") or (p["name"] == "amsgrad" and p["decoupled"])


def normalized_decay(p: dict, ctx: Any) -> float:
    """``weight_decay_norm * sqrt(batch_size / (train_size * epochs))`` (AdamW paper, B.1)."""
    if ctx.batch_size is None or ctx.train_size is None:
        raise ConfigError("optimizer.weight_decay_norm", p["weight_decay_norm"],
                          "needs the training budget: the trainer must pass batch_size and train_size "
                          "to ctx.build(...)")
    return p["weight_decay_norm"] * math.sqrt(ctx.batch_size / (ctx.train_size * ctx.epochs))


def decay_setting(p: dict, ctx: Any) -> tuple[float, bool]:
    """``(value, per_lr)``: the weight decay the param groups get, and whether it is a
    per-step rate to divide by each group's lr (``param_groups(lr_free_decay=True)``).

    - ``weight_decay`` (no ``weight_decay_norm``): torch's own knob, as is (decoupled: each
      step multiplies the weights by ``1 - lr_t * wd``; L2: ``wd * w`` joins the gradient).
    - ``weight_decay_norm`` with a decoupled variant: the paper's ``lambda``, a per-step rate
      independent of the lr: each step multiplies the weights by ``1 - eta_t * lambda``, with
      ``eta_t = lr_t / lr`` the schedule's multiplier. torch multiplies its ``weight_decay``
      by the lr, so each group gets ``lambda / (its lr)``.
    - ``weight_decay_norm`` with L2 decay: the normalized value is the L2 coefficient itself.
    """
    if p.get("weight_decay_norm") is None:
        return p["weight_decay"], False
    return normalized_decay(p, ctx), decoupled(p)


def _kwargs(p: dict, ctx: Any) -> dict:
    """The constructor's lr and weight_decay (the groups carry their own; this is the value
    of a group without multipliers, written for the reader of exported code)."""
    wd, per_lr = decay_setting(p, ctx)
    return {"lr": p["lr"], "weight_decay": wd / p["lr"] if per_lr else wd}


def _adam_kwargs(p: dict, ctx: Any) -> dict:
    kw = _kwargs(p, ctx)
    return {"lr": kw["lr"], "betas": (p["beta1"], p["beta2"]), "eps": p["eps"], "weight_decay": kw["weight_decay"]}


def _held(call: Call, p: dict) -> Call:
    return Call(hold_weight_decay, (call,)) if p.get("wd_schedule") == "constant" else call


def _sgd(p: dict, ctx: Any) -> Call:
    return Call(
        "torch.optim.SGD",
        (Ref("params"),),
        {**_kwargs(p, ctx), "momentum": p["momentum"], "dampening": p["dampening"], "nesterov": p["nesterov"]},
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


_NO_HOLD = ("wd_schedule", "must be 'coupled': L2 decay goes through the gradient (momentum, Adam's scaling), "
            "so there is no decay rate to hold constant; use a decoupled variant (adamw, nadamw, "
            "amsgrad with decoupled: true)")


def _sgd_consistency(v: dict) -> tuple[str, str] | None:
    if v["nesterov"] and (v["momentum"] <= 0 or v["dampening"] != 0):
        return "nesterov", "nesterov needs momentum > 0 and dampening = 0"
    return _NO_HOLD if v["wd_schedule"] == "constant" else None


def _l2_consistency(v: dict) -> tuple[str, str] | None:
    return _NO_HOLD if v["wd_schedule"] == "constant" else None


def _amsgrad_consistency(v: dict) -> tuple[str, str] | None:
    if v["wd_schedule"] == "constant" and not v["decoupled"]:
        return "wd_schedule", "wd_schedule: constant needs decoupled: true (L2 decay has no rate to hold)"
    return None


VARIANTS: dict[str, Component] = {
    "sgd": Component(
        "sgd",
        {
            "lr": Knob(0.1, POSITIVE),
            "momentum": Knob(0.9, UNIT_LEFT_CLOSED),
            "nesterov": Knob(False, BOOLEAN),
            "dampening": Knob(0.0, UNIT_LEFT_CLOSED),
            "weight_decay": Knob(5e-4, NONNEGATIVE, "L2: wd * w is added to the gradient"),
            **_COMMON,
        },
        _sgd,
        "SGD with momentum; Nesterov optional; L2 weight decay",
        consistency=_sgd_consistency,
    ),
    "adam_l2": Component(
        "adam_l2",
        {
            **_ADAM,
            "weight_decay": Knob(0.0, NONNEGATIVE, "L2: wd * w joins the gradient, then Adam's scaling"),
            **_COMMON,
        },
        _adam_l2,
        "Adam with coupled L2 weight decay",
        consistency=_l2_consistency,
    ),
    "adamw": Component(
        "adamw",
        {**_ADAM, "weight_decay": Knob(1e-2, NONNEGATIVE, "decoupled: w *= 1 - lr_t * wd each step"), **_COMMON},
        _adamw,
        "Adam with decoupled weight decay (Loshchilov & Hutter)",
    ),
    "amsgrad": Component(
        "amsgrad",
        {
            **_ADAM,
            "weight_decay": Knob(1e-2, NONNEGATIVE, "decoupled (AdamW) or L2 (Adam), by 'decoupled'"),
            "decoupled": Knob(True, BOOLEAN, "true: AdamW(amsgrad=True); false: Adam(amsgrad=True)"),
            **_COMMON,
        },
        _amsgrad,
        "AMSGrad: running max of the second moment; decoupled (AdamW) or L2 (Adam) decay",
        consistency=_amsgrad_consistency,
    ),
    "nadamw": Component(
        "nadamw",
        {
            **_ADAM,
            "weight_decay": Knob(1e-2, NONNEGATIVE, "decoupled: w *= 1 - lr_t * wd each step"),
            "momentum_decay": Knob(4e-3, NONNEGATIVE, "NAdam's psi"),
            **_COMMON,
        },
        _nadamw,
        "NAdam with decoupled weight decay (AlgoPerf baseline)",
    ),
}
