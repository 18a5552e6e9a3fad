"""Optimizer variants, each one ``torch.optim`` class with the exact semantics of its paper.

- ``sgd``: SGD with momentum (heavy ball or Nesterov); weight decay is L2 (added to the grad).
- ``adam_l2``: Adam with coupled L2 decay (``torch.optim.Adam(weight_decay=...)``).
- ``adamw``: Adam with decoupled decay (``torch.optim.AdamW``), Loshchilov & Hutter.
- ``amsgrad``: max of past second moments (Reddi et al.), decoupled (AdamW) or coupled (Adam).
- ``nadamw``: NAdam with decoupled decay (``torch.optim.NAdam(decoupled_weight_decay=True)``).
- ``radam``: RAdam (Liu et al. 2020), ``torch.optim.RAdam``, decoupled (AdamW-style) or L2 decay.
- ``muon``: ``torch.optim.Muon`` (Jordan et al. 2024) for hidden weights and conv filters,
  ``torch.optim.AdamW`` for the head, embeddings, norms, biases and 1-D parameters, in one
  optimizer (``spaces.muon.MuonWithAdamW``, groups from ``spaces.muon.muon_param_groups``).
- ``sf_adamw``, ``sf_sgd``: schedule-free AdamW / SGD (Defazio et al. 2024), the
  ``schedulefree`` package's ``AdamWScheduleFree`` / ``SGDScheduleFree``. They take no lr
  schedule (only ``constant`` without warmup: the rule is checked when the config loads) and
  need ``optimizer.train()`` / ``optimizer.eval()`` around training and evaluation
  (``spaces.schedule_free``; ``ctx.train_mode`` / ``ctx.eval_mode`` in trainers).

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

from optsearch.constraints import (
    BOOLEAN,
    NONNEGATIVE,
    POSITIVE,
    UNIT_LEFT_CLOSED,
    UNIT_OPEN,
    Interval,
    Nullable,
    Options,
)
from optsearch.errors import ConfigError
from optsearch.spaces.components import Component, Knob
from optsearch.spaces.recipe import Call, Expr, Ref
from optsearch.spaces.schedule_free import recompute_batchnorm
from optsearch.spaces.schedules import warmup_steps


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
    return p["name"] in ("adamw", "nadamw") or (p["name"] in ("amsgrad", "radam") and p["decoupled"])


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


def _radam(p: dict, ctx: Any) -> Call:
    return _held(
        Call("torch.optim.RAdam", (Ref("params"),), {**_adam_kwargs(p, ctx), "decoupled_weight_decay": p["decoupled"]}),
        p,
    )


# ---- Muon + AdamW ---------------------------------------------------------------------------


def _muon_available() -> str | None:
    import torch
    import torch.optim

    if hasattr(torch.optim, "Muon"):
        return None
    return f"needs torch.optim.Muon (PyTorch 2.9 or later); this is torch {torch.__version__}"


def _muon(p: dict, ctx: Any) -> Call:
    from optsearch.spaces.muon import MuonWithAdamW  # imports torch: only when a recipe is made

    muon = {"lr": p["lr"], "momentum": p["momentum"], "nesterov": p["nesterov"], "ns_steps": p["ns_steps"],
            "weight_decay": p["weight_decay"], "adjust_lr_fn": p["adjust_lr_fn"]}
    adamw = {"lr": p["adamw_lr"], "betas": (p["adamw_beta1"], p["adamw_beta2"]), "eps": p["adamw_eps"],
             "weight_decay": p["adamw_weight_decay"]}
    return _held(Call(MuonWithAdamW, (Ref("params"),), {"muon": muon, "adamw": adamw}), p)


def _muon_groups(params: dict, ctx: Any) -> Call:
    from optsearch.spaces.muon import muon_param_groups

    p = params["optimizer"]
    return Call(muon_param_groups, (Ref("model"),), {
        "lr": p["lr"], "weight_decay": p["weight_decay"], "adamw_lr": p["adamw_lr"],
        "adamw_weight_decay": p["adamw_weight_decay"], **params.get("param_groups", {}),
    })


def _muon_schedule(s: dict) -> tuple[str | None, str] | None:
    if s["name"] == "onecycle" and s["cycle_momentum"]:
        return "cycle_momentum", ("must be false: torch's OneCycleLR cycles one kind of momentum, and "
                                  "muon has two (Muon's momentum, AdamW's beta1)")
    return None


# ---- schedule-free ------------------------------------------------------------------------


def _schedulefree_available() -> str | None:
    import importlib.util

    if importlib.util.find_spec("schedulefree") is None:
        return "needs the schedulefree package (a dependency of optsearch): pip install 'schedulefree>=1.4,<2'"
    return None


def _sf_warmup(p: dict) -> Any:
    """warmup_steps: ``warmup_epochs`` in steps, cut like a schedule's warmup (0: none)."""
    return Expr(warmup_steps(p["warmup_epochs"])) if p["warmup_epochs"] else 0


def _sf_common(p: dict) -> dict:
    return {"weight_decay": p["weight_decay"], "warmup_steps": _sf_warmup(p), "r": p["r"],
            "weight_lr_power": p["weight_lr_power"]}


def _sf_adamw(p: dict, ctx: Any) -> Call:
    return Call("schedulefree.AdamWScheduleFree", (Ref("params"),),
                {"lr": p["lr"], "betas": (p["beta1"], p["beta2"]), "eps": p["eps"], **_sf_common(p)})


def _sf_sgd(p: dict, ctx: Any) -> Call:
    return Call("schedulefree.SGDScheduleFree", (Ref("params"),),
                {"lr": p["lr"], "momentum": p["momentum"], **_sf_common(p)})


def _sf_schedule(s: dict) -> tuple[str | None, str] | None:
    if s["name"] != "constant":
        return None, ("schedule-free optimizers take no lr schedule: use schedule: constant (without warmup) and "
                      "the variant's own warmup_epochs")
    if s["warmup_epochs"]:
        return "warmup_epochs", ("must be 0 with a schedule-free optimizer: it warms up by its own warmup_epochs "
                                 "knob")
    return None


_SF_USAGE = """Schedule-free: no lr schedule (build_scheduler's ConstantLR changes nothing; the warmup is
the optimizer's warmup_steps). Call optimizer.train() before training steps and optimizer.eval()
before evaluating or saving: while training the parameters hold y, where gradients are taken;
optimizer.eval() puts the averaged iterate x in them. After optimizer.eval(), recompute the
BatchNorm statistics at x: recompute_batchnorm(model, training_batches) (below)."""

_SF_KNOBS = {
    "weight_decay": Knob(0.0, NONNEGATIVE, "each step z -= lr_t * wd * y (decay taken at y, scaled by the lr)"),
    "warmup_epochs": Knob(0.0, NONNEGATIVE, "linear warmup of the lr, in epochs: lr_t = lr * min(1, (t+1) / W), "
                                           "W its length in steps"),
    "r": Knob(0.0, NONNEGATIVE, "the average x weights step t by (t+1)^r * lr_max^weight_lr_power (0: uniform)"),
    "weight_lr_power": Knob(2.0, NONNEGATIVE, "exponent of the largest lr so far in the averaging weights"),
}


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


_radam_consistency = _amsgrad_consistency


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
    ),    "radam": Component(
        "radam",
        {
            **_ADAM,
            "weight_decay": Knob(1e-2, NONNEGATIVE, "decoupled (w *= 1 - lr_t * wd) or L2 (wd * w joins the "
                                                    "gradient), by 'decoupled'"),
            "decoupled": Knob(True, BOOLEAN, "true: RAdam(decoupled_weight_decay=True); false: L2 decay"),
            **_COMMON,
        },
        _radam,
        "RAdam: Adam whose adaptive step is rectified by the variance of its lr, SGD with momentum while "
        "that variance is intractable",
        consistency=_radam_consistency,
    ),
    "muon": Component(
        "muon",
        {
            "lr": Knob(0.02, POSITIVE, "Muon's lr, before adjust_lr_fn"),
            "momentum": Knob(0.95, UNIT_LEFT_CLOSED, "Muon's buffer: B = momentum * B + (1 - momentum) * g"),
            "nesterov": Knob(True, BOOLEAN, "orthogonalise (1 - momentum) * g + momentum * B instead of B"),
            "ns_steps": Knob(5, Interval("int", 1, 99), "Newton-Schulz iterations"),
            "weight_decay": Knob(0.0, NONNEGATIVE, "Muon's side, decoupled: w *= 1 - lr_t * wd each step"),
            "adjust_lr_fn": Knob("original", Options("original", "match_rms_adamw", "spectral_unclamped"),
                                 "the step of an A x B matrix: lr * sqrt(max(1, A/B)), 0.2 * lr * sqrt(max(A, B)) "
                                 "or lr * sqrt(A/B)"),
            "adamw_lr": Knob(3e-4, POSITIVE, "the AdamW side's lr"),
            "adamw_beta1": Knob(0.9, UNIT_LEFT_CLOSED),
            "adamw_beta2": Knob(0.95, UNIT_LEFT_CLOSED),
            "adamw_eps": Knob(1e-8, POSITIVE),
            "adamw_weight_decay": Knob(0.0, NONNEGATIVE, "AdamW's side, decoupled: w *= 1 - adamw_lr_t * wd"),
            "wd_schedule": _COMMON["wd_schedule"],
        },
        _muon,
        "Muon (orthogonalised momentum) for hidden weights and conv filters, AdamW for the rest",
        schedule_rule=_muon_schedule,
        groups=_muon_groups,
        available=_muon_available,
    ),
    "sf_adamw": Component(
        "sf_adamw",
        {
            "lr": Knob(0.0025, POSITIVE, "z's step: z -= lr_t * (g / (sqrt(v / (1 - beta2^t)) + eps) + wd * y)"),
            "beta1": Knob(0.9, UNIT_OPEN, "gradients are taken at y = (1 - beta1) * z + beta1 * x"),
            "beta2": Knob(0.999, UNIT_LEFT_CLOSED),
            "eps": Knob(1e-8, POSITIVE),
            **_SF_KNOBS,
        },
        _sf_adamw,
        "schedule-free AdamW (Defazio et al. 2024): no lr schedule, evaluated at the average of its iterates",
        schedule_rule=_sf_schedule,
        available=_schedulefree_available,
        usage=_SF_USAGE,
        helpers=(recompute_batchnorm,),
    ),
    "sf_sgd": Component(
        "sf_sgd",
        {
            "lr": Knob(1.0, POSITIVE, "z's step: z -= lr_t * (g + wd * y)"),
            "momentum": Knob(0.9, UNIT_OPEN, "gradients are taken at y = (1 - momentum) * z + momentum * x"),
            **_SF_KNOBS,
        },
        _sf_sgd,
        "schedule-free SGD (Defazio et al. 2024): no lr schedule, evaluated at the average of its iterates",
        schedule_rule=_sf_schedule,
        available=_schedulefree_available,
        usage=_SF_USAGE,
        helpers=(recompute_batchnorm,),
    ),
}
