"""Optimizer variants, each one ``torch.optim`` class with the exact semantics of its paper.

- ``sgd``: SGD with momentum (heavy ball or Nesterov); weight decay is L2 (added to the grad).
- ``adam_l2``: Adam with coupled L2 decay (``torch.optim.Adam(weight_decay=...)``).
- ``adamw``: Adam with decoupled decay (``torch.optim.AdamW``), Loshchilov & Hutter.
- ``amsgrad``: max of past second moments (Reddi et al.), decoupled (AdamW) or coupled (Adam).
- ``nadamw``: NAdam with decoupled decay (``torch.optim.NAdam(decoupled_weight_decay=True)``).

``weight_decay_norm`` (AdamW paper, sec. B.1): when set, weight_decay =
weight_decay_norm * sqrt(batch_size / (train_size * epochs)), so decay is comparable across
budgets.
"""

from __future__ import annotations

import math
from typing import Any

from optsearch.spaces.components import Component, Knob, boolean, nonneg, positive, unit_left_open
from optsearch.spaces.recipe import Call, Ref


def _optional_nonneg(v: Any) -> str | None:
    return None if v is None else nonneg(v)


_COMMON = {
    "weight_decay_norm": Knob(None, _optional_nonneg, "normalized decay; overrides weight_decay when set"),
}
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


def _adam_kwargs(p: dict) -> dict:
    return {"lr": p["lr"], "betas": (p["beta1"], p["beta2"]), "eps": p["eps"]}


def _sgd(p: dict, ctx: Any) -> Call:
    return Call(
        "torch.optim.SGD",
        (Ref("params"),),
        {"lr": p["lr"], "momentum": p["momentum"], "dampening": p["dampening"], "nesterov": p["nesterov"]},
    )


def _adam_l2(p: dict, ctx: Any) -> Call:
    return Call("torch.optim.Adam", (Ref("params"),), {**_adam_kwargs(p), "amsgrad": False})


def _adamw(p: dict, ctx: Any) -> Call:
    return Call("torch.optim.AdamW", (Ref("params"),), {**_adam_kwargs(p), "amsgrad": False})


def _amsgrad(p: dict, ctx: Any) -> Call:
    cls = "torch.optim.AdamW" if p["decoupled"] else "torch.optim.Adam"
    return Call(cls, (Ref("params"),), {**_adam_kwargs(p), "amsgrad": True})


def _nadamw(p: dict, ctx: Any) -> Call:
    return Call(
        "torch.optim.NAdam",
        (Ref("params"),),
        {**_adam_kwargs(p), "momentum_decay": p["momentum_decay"], "decoupled_weight_decay": True},
    )


def _sgd_consistency(v: dict) -> str | None:
    if v["nesterov"] and (v["momentum"] <= 0 or v["dampening"] != 0):
        return "nesterov needs momentum > 0 and dampening = 0"
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
        },
        _sgd,
        "SGD with momentum; Nesterov optional; L2 weight decay",
        consistency=_sgd_consistency,
    ),
    "adam_l2": Component(
        "adam_l2",
        {**_ADAM, "weight_decay": Knob(0.0, nonneg, "L2: coupled, goes through the adaptive scaling"), **_COMMON},
        _adam_l2,
        "Adam with coupled L2 weight decay",
    ),
    "adamw": Component(
        "adamw",
        {**_ADAM, "weight_decay": Knob(1e-2, nonneg, "decoupled: p -= lr * wd * p"), **_COMMON},
        _adamw,
        "Adam with decoupled weight decay (Loshchilov & Hutter)",
    ),
    "amsgrad": Component(
        "amsgrad",
        {**_ADAM, "weight_decay": Knob(1e-2, nonneg), "decoupled": Knob(True, boolean), **_COMMON},
        _amsgrad,
        "AMSGrad: running max of the second moment; decoupled (AdamW) or L2 (Adam) decay",
    ),
    "nadamw": Component(
        "nadamw",
        {**_ADAM, "weight_decay": Knob(1e-2, nonneg), "momentum_decay": Knob(4e-3, nonneg), **_COMMON},
        _nadamw,
        "NAdam with decoupled weight decay (AlgoPerf baseline)",
    ),
}

# Which knob plays "momentum" for one-cycle momentum cycling.
MOMENTUM_KNOB = {"sgd": "momentum", "adam_l2": "beta1", "adamw": "beta1", "amsgrad": "beta1", "nadamw": "beta1"}
