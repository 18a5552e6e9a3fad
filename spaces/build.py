"""Params -> torch objects, through the recipes the exporter also renders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from optsearch.spaces.groups import param_groups
from optsearch.spaces.optimizers import VARIANTS, effective_weight_decay
from optsearch.spaces.recipe import Call, instantiate
from optsearch.spaces.schedules import SCHEDULES


@dataclass(frozen=True)
class BuildContext:
    """What a recipe may depend on besides the params: the training budget."""

    steps_per_epoch: int
    epochs: int
    batch_size: int = 1
    train_size: int = 1


def group_kwargs(params: dict, ctx: BuildContext) -> dict[str, Any]:
    """Arguments of ``param_groups`` (after the model) for these params."""
    opt = params["optimizer"]
    return {
        "lr": opt["lr"],
        "weight_decay": effective_weight_decay(opt, ctx),
        **params.get("param_groups", {}),
    }


def optimizer_recipe(params: dict, ctx: BuildContext) -> Call:
    opt = params["optimizer"]
    return VARIANTS[opt["name"]].recipe(opt, ctx)


def scheduler_recipe(params: dict, ctx: BuildContext) -> Call:
    sched = params["schedule"]
    return SCHEDULES[sched["name"]].recipe(sched, ctx, params["optimizer"])


def build_optimizer(params: dict, model: torch.nn.Module, ctx: BuildContext) -> torch.optim.Optimizer:
    groups = param_groups(model, **group_kwargs(params, ctx))
    return instantiate(optimizer_recipe(params, ctx), {"params": groups})


def build_scheduler(params: dict, optimizer: torch.optim.Optimizer, ctx: BuildContext):
    env = {"optimizer": optimizer, "steps_per_epoch": ctx.steps_per_epoch, "epochs": ctx.epochs}
    return instantiate(scheduler_recipe(params, ctx), env)


def build(params: dict, model: torch.nn.Module, ctx: BuildContext):
    """The optimizer and the per-batch lr scheduler for one trial's params."""
    optimizer = build_optimizer(params, model, ctx)
    return optimizer, build_scheduler(params, optimizer, ctx)
