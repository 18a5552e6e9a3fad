"""Reports: lr/momentum trajectories, the summary table, comparisons of variants."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState


def trajectory(params: dict, budget: dict, max_points: int = 500) -> dict[str, list[tuple[int, float]]]:
    """The lr (and momentum/beta1) at each optimizer step of a whole run, subsampled.

    Rebuilt from the params and the trial's budget through the same builders the trial used.
    """
    import torch

    from optsearch.spaces.build import BuildContext, build

    ctx = BuildContext(**budget)
    model = torch.nn.Sequential(torch.nn.Linear(1, 1))
    optimizer, scheduler = build(params, model, ctx)
    total = ctx.steps_per_epoch * ctx.epochs
    every = max(1, -(-total // max_points))
    lr: list[tuple[int, float]] = []
    momentum: list[tuple[int, float]] = []
    group = optimizer.param_groups[0]
    for step in range(total):
        if step % every == 0 or step == total - 1:
            lr.append((step, group["lr"]))
            if "betas" in group:
                momentum.append((step, group["betas"][0]))
            elif "momentum" in group:
                momentum.append((step, group["momentum"]))
        optimizer.step()  # no grads: a no-op that keeps torch's step-order check quiet
        scheduler.step()
    return {"lr_step": lr, "momentum_step": momentum}


def schedule_figure(curves: dict[str, list[tuple[int, float]]], title: str):
    """A matplotlib figure of the lr (and momentum) per step, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    steps, lrs = zip(*curves["lr_step"]) if curves.get("lr_step") else ((), ())
    ax.plot(steps, lrs, color="tab:blue", label="lr")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("lr")
    ax.set_title(title)
    if curves.get("momentum_step"):
        ax2 = ax.twinx()
        s2, m2 = zip(*curves["momentum_step"])
        ax2.plot(s2, m2, color="tab:orange", label="momentum / beta1")
        ax2.set_ylabel("momentum / beta1")
    fig.tight_layout()
    return fig


def counts(study: optuna.Study) -> dict[str, int]:
    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running"}
    for t in study.get_trials(deepcopy=False):
        if t.state in names:
            out[names[t.state]] += 1
    return out


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def epochs_spent(trials: list[Any]) -> int:
    """Total epochs (reported steps) over trials: the budget a pruner saves."""
    return sum(len(t.intermediate_values) for t in trials)
