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
    for k, lr in enumerate(lrs):
        if k < w:
            want = LR * (0.01 + 0.99 * k / w)
        else:
            want = eta_min + (LR - eta_min) * (1 + math.cos(math.pi * (k - w) / (total - w))) / 2
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-15), k
    assert lrs[w] == pytest.approx(LR)  # peak right after the warmup


def test_cosine_without_warmup():
    lrs, _ = run(params({"name": "cosine"}), 4, 5)
    assert lrs == pytest.approx([LR * (1 + math.cos(math.pi * k / 20)) / 2 for k in range(20)], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("t_mult", [1, 2, 3])
def test_sgdr_restarts_at_t0_t0_1_plus_tmult(t_mult):
    spe, t0_epochs, eta_min = 4, 1.5, 0.01
    t0 = round(t0_epochs * spe)  # 6 steps
    p = params({"name": "sgdr", "T_0": t0_epochs, "T_mult": t_mult, "eta_min": eta_min})
    lrs, _ = run(p, spe, 20)
    restarts, t_i, at = [0], t0, 0
    while at + t_i < len(lrs):
        at += t_i
        restarts.append(at)
        t_i *= t_mult
    assert restarts[:3] == [0, t0, t0 * (1 + t_mult)]
    # The paper: eta_t = eta_min + (eta_max - eta_min) (1 + cos(pi T_cur / T_i)) / 2
    for k, lr in enumerate(lrs):
        start = max(r for r in restarts if r <= k)
        t_i = t0 * t_mult ** restarts.index(start)
        want = eta_min + (LR - eta_min) * (1 + math.cos(math.pi * (k - start) / t_i)) / 2
        assert lr == pytest.approx(want, rel=1e-9), k
    for r in restarts[1:]:
        assert lrs[r] == pytest.approx(LR)  # warm restart
        assert lrs[r - 1] < LR / 2  # near the bottom just before it


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
