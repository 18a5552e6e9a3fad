"""Optimizer variants against their papers' update formulas, on real torch tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optsearch.errors import ConfigError
from optsearch.spaces import BuildContext, build

P0, G = 2.0, 0.5  # one weight, one gradient


class One(nn.Module):
    """A model with one 2-d weight (so it gets weight decay) holding P0."""

    def __init__(self, value: float = P0):
        super().__init__()
        self.w = nn.Parameter(torch.full((1, 1), value, dtype=torch.float64))


def step(opt_params: dict, grads: list[float], schedule: dict | None = None, ctx=BuildContext(10, 1)):
    m = One()
    p = {"optimizer": opt_params, "schedule": schedule or {"name": "constant"}, "param_groups": {}}
    opt, sched = build(p, m, ctx)
    for g in grads:
        m.w.grad = torch.full_like(m.w, g)
        opt.step()
        sched.step()
    return m.w.item(), opt


def test_adamw_decay_is_decoupled_adam_l2_decay_is_coupled():
    lr, wd, eps = 0.01, 0.1, 1e-8
    adam = {"lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": eps, "weight_decay": wd}
    w_adamw, opt = step({"name": "adamw", **adam}, [G])
    assert type(opt) is torch.optim.AdamW
    # step 1, bias-corrected: m_hat = g, v_hat = g^2; AdamW decays the weight directly
    assert w_adamw == pytest.approx(P0 * (1 - lr * wd) - lr * G / (abs(G) + eps), rel=1e-12)
    w_l2, opt = step({"name": "adam_l2", **adam}, [G])
    assert type(opt) is torch.optim.Adam and not opt.param_groups[0]["decoupled_weight_decay"]
    g = G + wd * P0  # L2: the decay joins the gradient, then Adam normalises it away
    assert w_l2 == pytest.approx(P0 - lr * g / (abs(g) + eps), rel=1e-12)
    assert w_l2 != pytest.approx(w_adamw)


def test_amsgrad_keeps_the_running_max_of_the_second_moment():
    b2 = 0.9
    grads = [1.0, 0.5, 0.1, 0.01]
    for decoupled, cls in ((True, torch.optim.AdamW), (False, torch.optim.Adam)):
        m = One()
        p = {"optimizer": {"name": "amsgrad", "lr": 1e-3, "beta2": b2, "weight_decay": 0.0, "decoupled": decoupled},
             "schedule": {"name": "constant"}, "param_groups": {}}
        opt, _ = build(p, m, BuildContext(10, 1))
        assert type(opt) is cls and opt.param_groups[0]["amsgrad"]
        v, vmax = 0.0, 0.0
        for g in grads:
            m.w.grad = torch.full_like(m.w, g)
            opt.step()
            v = b2 * v + (1 - b2) * g * g
            vmax = max(vmax, v)
            state = opt.state[m.w]
            assert state["exp_avg_sq"].item() == pytest.approx(v, rel=1e-12)
            assert state["max_exp_avg_sq"].item() == pytest.approx(vmax, rel=1e-12)
        assert v < vmax  # the gradient shrank: plain Adam's v fell, AMSGrad kept the max


def test_amsgrad_update_uses_the_max():
    lr, b1, b2, eps = 0.1, 0.0, 0.5, 1e-8  # beta1 = 0: m = g
    w, opt = step({"name": "amsgrad", "lr": lr, "beta1": b1, "beta2": b2, "eps": eps, "weight_decay": 0.0},
                  [1.0, 0.01])
    v1 = (1 - b2) * 1.0
    v2 = b2 * v1 + (1 - b2) * 0.01**2
    vmax = max(v1, v2)
    w1 = P0 - lr * 1.0 / (math.sqrt(v1 / (1 - b2)) + eps)
    w2 = w1 - lr * 0.01 / (math.sqrt(vmax / (1 - b2**2)) + eps)
    assert w == pytest.approx(w2, rel=1e-12)


def test_sgd_nesterov_with_l2():
    lr, mu, wd = 0.1, 0.9, 0.01
    grads = [G, -0.25, 1.0]
    w, opt = step({"name": "sgd", "lr": lr, "momentum": mu, "nesterov": True, "weight_decay": wd}, grads)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["nesterov"]
    x, buf = P0, None
    for g in grads:
        g = g + wd * x  # L2
        buf = g if buf is None else mu * buf + g  # (Sutskever) momentum buffer, dampening 0
        x = x - lr * (g + mu * buf)  # Nesterov look-ahead
    assert w == pytest.approx(x, rel=1e-12)
    w_heavy, _ = step({"name": "sgd", "lr": lr, "momentum": mu, "nesterov": False, "weight_decay": wd}, grads)
    assert w_heavy != pytest.approx(w)


def test_nadamw_is_nadam_with_decoupled_decay():
    lr, wd = 0.01, 0.5
    w, opt = step({"name": "nadamw", "lr": lr, "weight_decay": wd}, [0.0])
    assert type(opt) is torch.optim.NAdam and opt.param_groups[0]["decoupled_weight_decay"]
    assert w == pytest.approx(P0 * (1 - lr * wd), rel=1e-12)  # zero gradient: only the decay moves it


def test_normalized_weight_decay_is_the_papers_lr_free_rate_for_decoupled_variants():
    # AdamW paper, B.1: lambda = lambda_norm sqrt(b / (B T)); each step x <- x - eta_t lambda x
    # (eta_t: the schedule multiplier, 1 for a constant schedule), whatever the lr.
    b, n, epochs, lam_norm, spe = 128, 50_000, 8, 0.05, 10
    lam = lam_norm * math.sqrt(b / (n * epochs))
    ctx = BuildContext(steps_per_epoch=spe, epochs=epochs, batch_size=b, train_size=n)
    zero = [0.0] * 5  # zero gradients: Adam's update is 0, only the decay moves the weight
    for name in ("adamw", "nadamw", "amsgrad"):
        for lr in (1e-3, 0.3):
            w, opt = step({"name": name, "lr": lr, "weight_decay": 123.0, "weight_decay_norm": lam_norm}, zero,
                          ctx=ctx)
            assert w == pytest.approx(P0 * (1 - lam) ** 5, rel=1e-12), (name, lr)


def test_normalized_weight_decay_is_the_l2_coefficient_for_l2_variants():
    b, n, epochs, lam_norm = 64, 10_000, 4, 0.5
    lam = lam_norm * math.sqrt(b / (n * epochs))
    ctx = BuildContext(steps_per_epoch=10, epochs=epochs, batch_size=b, train_size=n)
    lr = 0.1
    w, _ = step({"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay_norm": lam_norm}, [G], ctx=ctx)
    assert w == pytest.approx(P0 - lr * (G + lam * P0), rel=1e-12)  # L2: lambda * w joins the gradient


def test_normalized_weight_decay_without_the_budget_is_refused():
    from optsearch.trainers.base import TrialContext

    p = {"optimizer": {"name": "adamw", "weight_decay_norm": 0.05}, "schedule": {"name": "constant"}}
    with pytest.raises(ConfigError, match="batch_size and train_size"):
        build(p, One(), BuildContext(10, 2))
    with pytest.raises(ConfigError, match="batch_size and train_size"):
        TrialContext(0, 0).build(p, One(), steps_per_epoch=10, epochs=2)  # a trainer that forgot them


def test_param_groups_no_decay_head_mult_and_layer_decay():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 2))
    lr, wd = 0.1, 0.05
    p = {"optimizer": {"name": "sgd", "lr": lr, "weight_decay": wd}, "schedule": {"name": "constant"},
         "param_groups": {"no_decay_bias_norm": True, "head_lr_mult": 10.0, "layer_decay": 0.5}}
    opt, _ = build(p, m, BuildContext(5, 1))
    seen = {}
    for g in opt.param_groups:
        for q in g["params"]:
            seen[id(q)] = (g["lr"], g["weight_decay"])
    want = {
        m[0].weight: (lr * 0.5**3, wd), m[0].bias: (lr * 0.5**3, 0.0),
        m[1].weight: (lr * 0.5**2, 0.0), m[1].bias: (lr * 0.5**2, 0.0),
        m[2].weight: (lr * 0.5, wd), m[2].bias: (lr * 0.5, 0.0),
        m[3].weight: (lr * 10.0, wd), m[3].bias: (lr * 10.0, 0.0),
    }
    assert len(seen) == 8
    for q, (glr, gwd) in want.items():
        assert seen[id(q)] == pytest.approx((glr, gwd))
    # switched off: everything decays
    p["param_groups"]["no_decay_bias_norm"] = False
    opt, _ = build(p, m, BuildContext(5, 1))
    assert {g["weight_decay"] for g in opt.param_groups} == {wd}


def test_no_decay_group_is_not_decayed_by_any_variant():
    for name in ("sgd", "adam_l2", "adamw", "amsgrad", "nadamw", "radam", "sf_adamw", "sf_sgd"):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(2, 2, dtype=torch.float64))
        bias = m[0].bias.detach().clone()
        p = {"optimizer": {"name": name, "lr": 0.1, "weight_decay": 0.9}, "schedule": {"name": "constant"},
             "param_groups": {"no_decay_bias_norm": True}}
        opt, _ = build(p, m, BuildContext(5, 1))
        m[0].bias.grad = torch.zeros_like(bias)
        m[0].weight.grad = torch.zeros_like(m[0].weight)
        w = m[0].weight.detach().clone()
        getattr(opt, "train", lambda: None)()  # schedule-free: steps only in train mode
        opt.step()
        assert torch.equal(m[0].bias, bias), name  # zero grad, no decay: unchanged
        assert not torch.equal(m[0].weight, w), name  # the weight did decay


def test_wd_schedule_coupled_follows_lr_constant_holds_it():
    lr, wd, spe = 0.1, 0.2, 10
    sched = {"name": "cosine"}
    lrs = [lr * (1 + math.cos(math.pi * k / spe)) / 2 for k in range(spe)]
    zero = [0.0] * spe  # zero gradients: Adam's update is 0, only the decay moves the weight
    w, _ = step({"name": "adamw", "lr": lr, "weight_decay": wd, "wd_schedule": "coupled"}, zero, sched)
    assert w == pytest.approx(P0 * math.prod(1 - a * wd for a in lrs), rel=1e-12)
    w, opt = step({"name": "adamw", "lr": lr, "weight_decay": wd, "wd_schedule": "constant"}, zero, sched)
    assert w == pytest.approx(P0 * (1 - lr * wd) ** spe, rel=1e-12)
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[0]["held_decay"] == lr * wd
    for name in ("nadamw", "amsgrad"):
        w, _ = step({"name": name, "lr": lr, "weight_decay": wd, "wd_schedule": "constant"}, zero, sched)
        assert w == pytest.approx(P0 * (1 - lr * wd) ** spe, rel=1e-12), name


def test_wd_schedule_constant_matches_torch_when_the_lr_is_constant():
    grads = [0.5, -0.3, 0.2, 0.9]
    opt = {"name": "adamw", "lr": 0.05, "weight_decay": 0.3}
    w_torch, _ = step({**opt, "wd_schedule": "coupled"}, grads)
    w_held, _ = step({**opt, "wd_schedule": "constant"}, grads)
    assert w_held == w_torch  # same multiplication at the same point of the step


def test_wd_schedule_constant_is_rejected_for_l2_decay():
    for opt in ({"name": "sgd"}, {"name": "adam_l2"}, {"name": "amsgrad", "decoupled": False}):
        with pytest.raises(ConfigError, match="wd_schedule"):
            step({**opt, "wd_schedule": "constant"}, [G])


def test_radam_is_sgd_with_momentum_until_the_variance_is_tractable_then_rectified_adam():
    # Liu et al. 2020, Algorithm 2 (torch's threshold rho_t > 5): rho_inf = 2 / (1 - b2) - 1,
    # rho_t = rho_inf - 2 t b2^t / (1 - b2^t); rectified: m_hat * r_t * sqrt(1 - b2^t) / (sqrt(v) + eps).
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    grads = [0.5, -0.3, 0.8, 0.2, 0.6, -0.1, 0.4, 0.9]
    rho_inf = 2 / (1 - b2) - 1
    for decoupled in (True, False):
        w, opt = step({"name": "radam", "lr": lr, "beta1": b1, "beta2": b2, "eps": eps, "weight_decay": wd,
                       "decoupled": decoupled}, grads)
        assert type(opt) is torch.optim.RAdam and opt.param_groups[0]["decoupled_weight_decay"] is decoupled
        x, m, v, modes = P0, 0.0, 0.0, []
        for t, g in enumerate(grads, 1):
            if decoupled:
                x *= 1 - lr * wd
            else:
                g = g + wd * x
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat = m / (1 - b1**t)
            rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
            if rho > 5:
                r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                x -= lr * m_hat * r * math.sqrt(1 - b2**t) / (math.sqrt(v) + eps)
            else:
                x -= lr * m_hat
            modes.append(rho > 5)
        assert modes[0] is False and modes[-1] is True  # both regimes were exercised
        assert w == pytest.approx(x, rel=1e-12), decoupled


def test_radam_decay_settings():
    lr, wd, spe = 0.1, 0.2, 10
    zero = [0.0] * spe  # zero gradients: only the decay moves the weight
    lrs = [lr * (1 + math.cos(math.pi * k / spe)) / 2 for k in range(spe)]
    w, _ = step({"name": "radam", "lr": lr, "weight_decay": wd}, zero, {"name": "cosine"})
    assert w == pytest.approx(P0 * math.prod(1 - a * wd for a in lrs), rel=1e-12)  # decoupled by default
    w, _ = step({"name": "radam", "lr": lr, "weight_decay": wd, "wd_schedule": "constant"}, zero, {"name": "cosine"})
    assert w == pytest.approx(P0 * (1 - lr * wd) ** spe, rel=1e-12)
    with pytest.raises(ConfigError, match="wd_schedule"):
        step({"name": "radam", "decoupled": False, "wd_schedule": "constant"}, [G])
    b, n, epochs, lam_norm = 128, 50_000, 8, 0.05
    lam = lam_norm * math.sqrt(b / (n * epochs))
    w, _ = step({"name": "radam", "lr": 0.3, "weight_decay_norm": lam_norm}, [0.0] * 5,
                ctx=BuildContext(steps_per_epoch=10, epochs=epochs, batch_size=b, train_size=n))
    assert w == pytest.approx(P0 * (1 - lam) ** 5, rel=1e-12)  # the paper's lr-free rate
