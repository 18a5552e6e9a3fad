"""Params -> torch objects, through the recipes the exporter also renders.

Three recipes per trial (``recipes``): the param groups (``param_groups(model, ...)``), the
optimizer over them (``Ref("params")``), and the scheduler over the optimizer
(``Ref("optimizer")``); a variant may bring its own groups recipe (``muon``: Muon's and
AdamW's groups). ``build`` instantiates them; ``spaces.export.to_python`` renders the
very same trees as source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a recipe is instantiated, not when params are sampled
    import torch

from optsearch.constraints import at_least, check
from optsearch.spaces.groups import param_groups
from optsearch.spaces.optimizers import VARIANTS, decay_setting
from optsearch.spaces.params import check_budget, resolve
from optsearch.spaces.recipe import Call, Ref, instantiate
from optsearch.spaces.schedules import SCHEDULES


@dataclass(frozen=True)
class BuildContext:
    """What a recipe may depend on besides the params: the training budget."""

    steps_per_epoch: int
    epochs: int
    batch_size: int | None = None  # needed by weight_decay_norm only
    train_size: int | None = None

    def check(self, key: str = "build") -> "BuildContext":
        """This context with plain ints (numpy ints accepted); ``ConfigError`` if not >= 1."""
        values = {}
        for name in ("steps_per_epoch", "epochs", "batch_size", "train_size"):
            v = getattr(self, name)
            if v is None and name in ("batch_size", "train_size"):
                values[name] = None
                continue
            check(f"{key}.{name}", v, at_least(1))
            values[name] = int(v)
        return BuildContext(**values)


class Recipes(NamedTuple):
    groups: Call  # param_groups(model, ...)
    optimizer: Call  # over Ref("params")
    scheduler: Call  # over Ref("optimizer"); Exprs over steps_per_epoch, epochs


def group_kwargs(params: dict, ctx: BuildContext) -> dict[str, Any]:
    """Arguments of ``param_groups`` (after the model) for these params."""
    opt = params["optimizer"]
    weight_decay, per_lr = decay_setting(opt, ctx)
    return {"lr": opt["lr"], "weight_decay": weight_decay, **params.get("param_groups", {}), "lr_free_decay": per_lr}


def groups_recipe(params: dict, ctx: BuildContext) -> Call:
    variant = VARIANTS[params["optimizer"]["name"]]
    if variant.groups is not None:  # a variant that splits the model its own way (muon)
        return variant.groups(params, ctx)
    return Call(param_groups, (Ref("model"),), group_kwargs(params, ctx))


def optimizer_recipe(params: dict, ctx: BuildContext) -> Call:
    opt = params["optimizer"]
    return VARIANTS[opt["name"]].recipe(opt, ctx)


def scheduler_recipe(params: dict, ctx: BuildContext) -> Call:
    sched = params["schedule"]
    return SCHEDULES[sched["name"]].recipe(sched, ctx, params["optimizer"])


def recipes(params: dict, ctx: BuildContext, key: str = "params") -> tuple[dict, Recipes]:
    """Validate ``params`` (``ConfigError`` on bad input) and describe what they build.

    Returns the resolved params (defaults filled in) and the three recipes.
    """
    ctx = ctx.check()
    resolved = resolve(params, key)
    check_budget(resolved, ctx, key)
    return resolved, Recipes(
        groups_recipe(resolved, ctx), optimizer_recipe(resolved, ctx), scheduler_recipe(resolved, ctx)
    )


def _optimizer(r: Recipes, model: torch.nn.Module, ctx: BuildContext) -> torch.optim.Optimizer:
    ctx = ctx.check()  # an optimizer's Exprs (a schedule-free warmup) are over the budget too
    return instantiate(r.optimizer, {"params": instantiate(r.groups, {"model": model}),
                                     "steps_per_epoch": ctx.steps_per_epoch, "epochs": ctx.epochs})


def _scheduler(r: Recipes, optimizer: torch.optim.Optimizer, ctx: BuildContext):
    ctx = ctx.check()
    return instantiate(r.scheduler, {"optimizer": optimizer, "steps_per_epoch": ctx.steps_per_epoch,
                                     "epochs": ctx.epochs})


def build_optimizer(params: dict, model: torch.nn.Module, ctx: BuildContext) -> torch.optim.Optimizer:
    return _optimizer(recipes(params, ctx)[1], model, ctx)


def build_scheduler(params: dict, optimizer: torch.optim.Optimizer, ctx: BuildContext):
    return _scheduler(recipes(params, ctx)[1], optimizer, ctx)


def build(params: dict, model: torch.nn.Module, ctx: BuildContext):
    """The optimizer and the per-batch lr scheduler for one trial's params."""
    r = recipes(params, ctx)[1]
    optimizer = _optimizer(r, model, ctx)
    return optimizer, _scheduler(r, optimizer, ctx)
