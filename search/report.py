"""Reports: lr/momentum trajectories, the summary table, comparisons of variants."""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import TrialState


def trajectory(params: dict, budget: dict, max_points: int = 500,
               until: int | None = None) -> dict[str, list[tuple[int, float]]]:
    """The lr (and momentum/beta1) at each optimizer step of a run, subsampled: the whole
    run, or its first ``until`` steps (a trial pruned or failed before its end).

    Rebuilt from the params and the trial's budget through the same builders the trial used,
    on a two-weight model (a hidden layer and a head) without param-group multipliers: the
    curve of the ``lr`` knob itself (a head or layer group's lr is this times its
    multiplier; for ``muon``, the first group is Muon's). A schedule-free optimizer's lr is
    the one its step used (``scheduled_lr``: its own warmup), and its momentum / beta1 is
    its interpolation weight.
    """
    import torch

    from optsearch.spaces.build import BuildContext, build
    from optsearch.spaces.schedule_free import train_mode

    ctx = BuildContext(**budget)
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    optimizer, scheduler = build({**params, "param_groups": {}}, model, ctx)
    train_mode(optimizer)  # schedule-free optimizers step only in train mode
    total = ctx.steps_per_epoch * ctx.epochs
    if until is not None:
        total = max(0, min(total, until))
    every = max(1, -(-total // max_points))
    lr: list[tuple[int, float]] = []
    momentum: list[tuple[int, float]] = []
    group = optimizer.param_groups[0]
    for step in range(total):
        now = group["lr"]
        mom = group["betas"][0] if "betas" in group else group.get("momentum")
        optimizer.step()  # no grads: a no-op that keeps torch's step-order check quiet
        if step % every == 0 or step == total - 1:
            lr.append((step, group.get("scheduled_lr", now)))  # schedule-free: set by this step
            if mom is not None:
                momentum.append((step, mom))
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
    lines = ax.get_lines()
    if curves.get("momentum_step"):
        ax2 = ax.twinx()
        s2, m2 = zip(*curves["momentum_step"])
        ax2.plot(s2, m2, color="tab:orange", linestyle="--", label="momentum / beta1 (right axis)")
        ax2.set_ylabel("momentum / beta1")
        lines = lines + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


def study_figures(trials: list[optuna.trial.FrozenTrial], direction: optuna.study.StudyDirection,
                  metric: str = "Objective Value") -> dict[str, Any]:
    """The plots people look for on a study's parent run, by Optuna's matplotlib
    visualisations of a study's ``trials``: the optimisation history, a parallel-coordinates
    plot of the searched params, and param importances (PED-ANOVA, which takes milliseconds
    where fANOVA takes a second; when the trials allow it). Names -> figures."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as vis

    storage = optuna.storages.InMemoryStorage()  # the plots need a Study
    creation = logging.getLogger(optuna.storages.InMemoryStorage.__module__)
    level = creation.level
    creation.setLevel(logging.WARNING)  # not "A new study created in memory" in the user's terminal
    try:
        storage.create_new_study([direction], "plots")
    finally:
        creation.setLevel(level)
    study = optuna.load_study(study_name="plots", storage=storage)
    study.add_trials([t for t in trials if t.state.is_finished()])
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API notices
        if complete:
            out["optimization_history.png"] = vis.plot_optimization_history(study, target_name=metric).figure
        searched = sorted({k for t in complete for k in t.params})
        if len(complete) >= 2 and searched:
            out["parallel_coordinate.png"] = vis.plot_parallel_coordinate(study, params=searched,
                                                                          target_name=metric).figure
            try:
                out["param_importances.png"] = vis.plot_param_importances(
                    study, target_name=metric, evaluator=optuna.importance.PedAnovaImportanceEvaluator()).figure
            except (ValueError, RuntimeError):  # e.g. no param shared by every trial of a conditional space
                pass
    for fig in out.values():
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
    return out


def epochs_spent(trials: list[Any]) -> int:
    """Total epochs (reported steps) over trials: the budget a pruner saves."""
    return sum(len(t.intermediate_values) for t in trials)


# --- comparing variants at equal budget -------------------------------------------------
def _group_key(t: optuna.trial.FrozenTrial, by: str) -> str:
    params = t.user_attrs.get("params") or {}
    section = params.get(by) or {}
    return str(section.get("name", "?"))


def trial_value(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's value for comparisons: its final value, or a pruned trial's last finite
    report; None when it has none (a non-finite value is no value)."""
    if t.state == TrialState.COMPLETE:
        return t.value if t.value is not None and math.isfinite(t.value) else None
    if t.state == TrialState.PRUNED:
        finite = [v for _, v in sorted(t.intermediate_values.items()) if math.isfinite(v)]
        return finite[-1] if finite else None
    return None


def compare(groups: dict[str, list[optuna.trial.FrozenTrial]], maximize: bool = True,
            ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
    """Per group: trials, epochs spent, best, median, and the expected best value of k trials
    (``stats``: the unbiased estimator, Tang et al. 2020, and Dodge et al.'s with-replacement
    one) for each k up to the group's own trials with a value: never extrapolated, so a
    group with fewer trials shows no value at the larger k."""
    from optsearch.search import stats

    rows = []
    for name, ts in groups.items():
        values = [v for v in (trial_value(t) for t in ts) if v is not None]
        row: dict[str, Any] = {
            "group": name, "trials": len(ts), "complete": sum(t.state == TrialState.COMPLETE for t in ts),
            "epochs": epochs_spent(ts), "values": len(values),
            "best": (max(values) if maximize else min(values)) if values else None,
            "median": float(sorted(values)[len(values) // 2]) if values else None,
            "expected_max": stats.expected_max_curve(values, maximize, ks, "unbiased") if values else {},
            "dodge": stats.expected_max_curve(values, maximize, ks, "dodge") if values else {},
        }
        rows.append(row)
    return rows


def compare_studies(storage: str, names: list[str], by: str = "optimizer") -> tuple[list[dict], bool]:
    """One study: group its trials by ``by`` (optimizer or schedule). Several: one group each."""
    from optsearch.search.exporting import load_study

    studies = [load_study(storage, name) for name in names]
    maximize = studies[0].direction == optuna.study.StudyDirection.MAXIMIZE
    groups: dict[str, list] = {}
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    if len(studies) == 1:
        for t in studies[0].get_trials(deepcopy=False, states=finished):
            groups.setdefault(_group_key(t, by), []).append(t)
    else:
        for name, study in zip(names, studies):
            groups[name] = study.get_trials(deepcopy=False, states=finished)
    return compare(groups, maximize), maximize


def print_comparison(rows: list[dict], maximize: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    ks = sorted({k for r in rows for k in r["expected_max"]})
    title = "equal-budget comparison: E\\[best of k trials], unbiased (Tang et al. 2020) and Dodge et al. 2019"
    table = Table(title=title + ("" if maximize else ", lower is better"))
    for col in ["group", "trials", "complete", "epochs", "best", "median", "estimator"] + [f"k={k}" for k in ks]:
        table.add_column(col, justify="left" if col in ("group", "estimator") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        table.add_row(r["group"], str(r["trials"]), str(r["complete"]), str(r["epochs"]), fmt(r["best"]),
                      fmt(r["median"]), "unbiased", *[fmt(r["expected_max"].get(k)) for k in ks])
        table.add_row("", "", "", "", "", "", "Dodge", *[fmt(r["dodge"].get(k)) for k in ks], style="dim")
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped output: no wrapping of wide tables
    console.print(table)
    console.print("A pruned trial counts with its last reported value; '-': k beyond the group's trials "
                  "(no value is extrapolated). `optsearch compare CONFIG` runs a fair experiment with a verdict.",
                  style="dim")
