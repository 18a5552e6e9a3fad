"""Known answers: every schedule's lr (and momentum) at chosen steps equals its paper's formula.

The trainers step the scheduler after every optimizer step, so the lr used by step k
(0-based) is what the optimizer holds after k scheduler steps; ``run`` records exactly that.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optsearch.errors import ConfigError
from optsearch.spaces import BuildContext, build

LR = 0.1


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def params(schedule: dict, optimizer: dict | None = None, **groups) -> dict:
    return {
        "optimizer": optimizer or {"name": "adamw", "lr": LR},
        "schedule": schedule,
        "param_groups": groups,
    }


def run(p: dict, steps_per_epoch: int, epochs: int, group: int = 0):
    """lr and momentum (SGD momentum or Adam beta1) used at each step of the whole run."""
    opt, sched = build(p, model(), BuildContext(steps_per_epoch, epochs))
    lrs, moms = [], []
    for _ in range(steps_per_epoch * epochs):
        g = opt.param_groups[group]
        lrs.append(g["lr"])
        moms.append(g["betas"][0] if "betas" in g else g["momentum"])
        opt.step()  # no gradients: moves nothing, keeps torch's step-order check quiet
        sched.step()
    return lrs, moms


def test_constant_without_and_with_warmup():
    lrs, _ = run(params({"name": "constant"}), 5, 2)
    assert lrs == [LR] * 10
    lrs, _ = run(params({"name": "constant", "warmup_epochs": 1, "warmup_start_factor": 0.2}), 5, 2)
    w = 5
    for k in range(10):
        want = LR * (0.2 + 0.8 * k / w) if k < w else LR
        assert lrs[k] == pytest.approx(want, rel=1e-12)


def test_step_decays_at_the_fractions():
    # T = 40; milestones at 0.5 T = 20 and 0.75 T = 30
    lrs, _ = run(params({"name": "step", "milestones": [0.5, 0.75], "gamma": 0.1}), 10, 4)
    for k, lr in enumerate(lrs):
        n = (k >= 20) + (k >= 30)
        assert lr == pytest.approx(LR * 0.1**n, rel=1e-12), k
    assert lrs[19] == pytest.approx(LR) and lrs[20] == pytest.approx(LR * 0.1)
    assert lrs[29] == pytest.approx(LR * 0.1) and lrs[30] == pytest.approx(LR * 0.01)


def test_step_with_warmup_keeps_milestones_at_fractions_of_the_whole_run():
    p = params({"name": "step", "milestones": [0.5], "gamma": 0.5, "warmup_epochs": 1, "warmup_start_factor": 0.1})
    lrs, _ = run(p, 10, 4)  # warmup 10 steps, decay at step 20
    for k, lr in enumerate(lrs):
        want = LR * (0.1 + 0.9 * k / 10) if k < 10 else LR * (0.5 if k >= 20 else 1.0)
        assert lr == pytest.approx(want, rel=1e-12), k


def test_cosine_with_warmup():
    spe, epochs, eta_min = 8, 5, 1e-3
    p = params({"name": "cosine", "warmup_epochs": 1, "warmup_start_factor": 0.01, "eta_min": eta_min})
    lrs, _ = run(p, spe, epochs)
    w, total = spe, spe * epochs
    low = eta_min * LR  # eta_min is a fraction of the lr
    for k, lr in enumerate(lrs):
        if k < w:
            want = LR * (0.01 + 0.99 * k / w)
        else:
            want = low + (LR - low) * (1 + math.cos(math.pi * (k - w) / (total - w))) / 2
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-15), k
    assert lrs[w] == pytest.approx(LR)  # peak right after the warmup


def test_cosine_without_warmup():
    lrs, _ = run(params({"name": "cosine"}), 4, 5)
    assert lrs == pytest.approx([LR * (1 + math.cos(math.pi * k / 20)) / 2 for k in range(20)], rel=1e-9, abs=1e-15)


def test_eta_min_is_relative_to_each_groups_lr():
    # layer_decay 0.1 puts the first layer's lr at LR / 100 = 1e-3, below an absolute floor of
    # 0.05 * LR = 5e-3: with an absolute eta_min that group would anneal upwards.
    for schedule in ({"name": "cosine", "eta_min": 0.05}, {"name": "sgdr", "T_0": 2.0, "T_mult": 1, "eta_min": 0.05}):
        p = params(schedule, head_lr_mult=1.0, layer_decay=0.1)
        opt, sched = build(p, model(), BuildContext(5, 2))
        peaks = [g["lr"] for g in opt.param_groups]
        assert min(peaks) == pytest.approx(LR * 0.01)
        for _ in range(9):
            opt.step()
            sched.step()
        for g, peak in zip(opt.param_groups, peaks):  # step 9 of a 10-step anneal: just above the floor
            want = peak * (0.05 + 0.95 * (1 + math.cos(math.pi * 9 / 10)) / 2)
            assert g["lr"] == pytest.approx(want, rel=1e-12) and g["lr"] <= peak


def restart_epochs(t0: float, t_mult: int, epochs: float) -> list[float]:
    """Where SGDR restarts, in epochs, by the geometric series' closed form (not the code's loop)."""
    out, i = [], 1
    while True:
        at = t0 * i if t_mult == 1 else t0 * (t_mult ** i - 1) / (t_mult - 1)
        if at >= epochs - 1e-9:
            return out
        out.append(at)
        i += 1


@pytest.mark.parametrize("t0,t_mult,spe,epochs", [(1.5, 1, 4, 20), (1.5, 2, 4, 20), (1.5, 3, 4, 20),
                                                   (3.333, 2, 88, 10), (1.0, 2, 88, 10), (2.0, 1, 7, 10)])
def test_sgdr_restarts_land_on_the_epochs_the_config_names(t0, t_mult, spe, epochs):
    p = params({"name": "sgdr", "T_0": t0, "T_mult": t_mult, "eta_min": 0.0})
    lrs, _ = run(p, spe, epochs)
    starts = [0] + [s for s in (round(e * spe) for e in restart_epochs(t0, t_mult, epochs)) if s < spe * epochs]
    # the paper: eta_t = eta_max (1 + cos(pi T_cur / T_i)) / 2, T_cur the steps since the restart
    ends = starts[1:] + [round(sum(t0 * t_mult ** i for i in range(len(starts))) * spe)]
    for k, lr in enumerate(lrs):
        i = max(j for j, s in enumerate(starts) if s <= k)
        want = LR * (1 + math.cos(math.pi * (k - starts[i]) / (ends[i] - starts[i]))) / 2
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-15), k
    assert [k for k in range(1, len(lrs)) if lrs[k] > lrs[k - 1]] == starts[1:]  # restarts there, only there


def test_sgdr_at_the_shipped_budget_ends_annealed_instead_of_restarting_on_its_last_step():
    # cifar10-adamw-sgdr.yaml: 88 steps per epoch, 10 epochs, T_0 = 3.333, T_mult = 2: cycles of
    # 3.333 and 6.667 epochs end with the run. Rounding the first cycle to 293 steps and repeating
    # 293 * 2**i put a restart at step 879, the run's last step, at the peak lr.
    lrs, _ = run(params({"name": "sgdr", "T_0": 3.333, "T_mult": 2}), 88, 10)
    assert lrs[293] == pytest.approx(LR) and lrs[292] < 1e-3 * LR
    assert max(lrs[294:]) < LR and lrs[879] < 1e-4 * LR


def test_step_milestones_shift_by_the_warmup_as_cut():
    # a 3-epoch warmup in a 2-epoch run of 10 steps is cut to 19 steps; the milestone at
    # round(0.99 * 20) = step 20 is 20 - 19 = 1 step into MultiStepLR, which starts after it
    p = params({"name": "step", "milestones": [0.99], "warmup_epochs": 3.0})
    _, sched = build(p, model(), BuildContext(10, 2))
    assert dict(sched._schedulers[1].milestones) == {1: 1}


def _cos(start, end, pct):
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


@pytest.mark.parametrize("variant", ["adamw", "sgd"])
def test_onecycle_lr_and_momentum(variant):
    spe, epochs = 10, 10  # T = 100
    div, final = 20.0, 100.0
    sched = {"name": "onecycle", "pct_start": 0.3, "div_factor": div, "final_div_factor": final,
             "base_momentum": 0.8, "max_momentum": 0.9}
    lrs, moms = run(params(sched, {"name": variant, "lr": LR}), spe, epochs)
    peak = 29  # torch: phase 1 ends at pct_start * T - 1
    initial, low = LR / div, LR / div / final
    assert lrs[0] == pytest.approx(initial) and moms[0] == pytest.approx(0.9)
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == peak
    assert moms[peak] == pytest.approx(0.8) and min(moms) == pytest.approx(0.8)
    assert lrs[99] == pytest.approx(low)
    for k in range(100):
        if k <= peak:
            want_lr, want_m = _cos(initial, LR, k / peak), _cos(0.9, 0.8, k / peak)
        else:
            pct = (k - peak) / (99 - peak)
            want_lr, want_m = _cos(LR, low, pct), _cos(0.8, 0.9, pct)
        assert lrs[k] == pytest.approx(want_lr, rel=1e-9), k
        assert moms[k] == pytest.approx(want_m, rel=1e-9), k


def test_onecycle_linear_three_phase_and_no_momentum_cycling():
    sched = {"name": "onecycle", "pct_start": 0.25, "anneal_strategy": "linear", "three_phase": True,
             "cycle_momentum": False, "div_factor": 10.0, "final_div_factor": 10.0}
    lrs, moms = run(params(sched, {"name": "adamw", "lr": LR, "beta1": 0.7}), 10, 8)  # T = 80
    initial = LR / 10
    # phases end at 0.25 T - 1 = 19, 2 * 0.25 T - 2 = 38, T - 1 = 79
    assert lrs[0] == pytest.approx(initial)
    assert lrs[19] == pytest.approx(LR)
    assert lrs[38] == pytest.approx(initial)
    assert lrs[79] == pytest.approx(initial / 10)
    assert lrs[10] == pytest.approx(initial + (LR - initial) * 10 / 19)
    assert lrs[50] == pytest.approx(initial + (initial / 10 - initial) * (50 - 38) / (79 - 38))
    assert set(moms) == {0.7}  # beta1 untouched


def test_onecycle_peak_is_each_groups_lr():
    sched = {"name": "onecycle", "pct_start": 0.5}
    p = params(sched, {"name": "adamw", "lr": LR}, head_lr_mult=3.0, layer_decay=0.5)
    opt, s = build(p, model(), BuildContext(10, 2))
    peaks = [g["max_lr"] for g in opt.param_groups]
    # layers: Linear (2 below the head), LayerNorm (1 below), head Linear
    assert sorted(set(peaks)) == pytest.approx([LR * 0.25, LR * 0.5, LR * 3.0])
    for _ in range(9):
        opt.step()
        s.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(peaks)


def test_noam_peaks_at_warmup_then_inverse_sqrt():
    spe, w = 5, 10
    lrs, _ = run(params({"name": "noam", "warmup_epochs": 2}), spe, 8)
    for k, lr in enumerate(lrs):
        s = k + 1
        assert lr == pytest.approx(LR * min(s / w, math.sqrt(w / s)), rel=1e-12), k
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == w - 1
    # Vaswani et al.: d^-0.5 min(s^-0.5, s w^-1.5), scaled so its peak is LR
    d = 512
    vaswani = [d**-0.5 * min(s**-0.5, s * w**-1.5) for s in range(1, 41)]
    scale = LR / max(vaswani)
    assert lrs == pytest.approx([v * scale for v in vaswani], rel=1e-9)


def test_warmup_longer_than_the_run_is_cut_to_end_one_step_before_it():
    lrs, _ = run(params({"name": "cosine", "warmup_epochs": 3, "warmup_start_factor": 0.01, "eta_min": 0.0}), 5, 3)
    assert lrs[0] == pytest.approx(LR * 0.01)
    assert lrs[14] == pytest.approx(LR)  # warmup over steps 0..13, the peak at the last step
    assert lrs[:15] == sorted(lrs[:15])


def test_budget_checks_raise_config_errors():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build(params({"name": "cosine", "warmup_epochs": 3}), model(), BuildContext(1, 1))
    with pytest.raises(ConfigError, match="milestones"):
        build(params({"name": "step", "milestones": [0.1], "warmup_epochs": 1}), model(), BuildContext(5, 4))
    with pytest.raises(ConfigError, match="pct_start"):
        build(params({"name": "onecycle", "pct_start": 0.1}), model(), BuildContext(2, 2))
