"""Schedule-free AdamW / SGD: the x / y / z sequences of Defazio et al. (2024), Algorithm 1,
computed by hand on a quadratic; their train/eval modes and BatchNorm statistics in the
trainers; the rule that they take no lr schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import schedulefree
import torch
import yaml
from torch import nn

from optsearch.errors import ConfigError
from optsearch.search import config
from optsearch.spaces import BuildContext, Space, build
from optsearch.spaces.params import resolve
from optsearch.spaces.schedule_free import eval_mode, recompute_batchnorm, train_mode
from optsearch.trainers.base import TrialContext
from optsearch.trainers.digits import DigitsOptions, DigitsTrainer

A, B, W0 = 3.0, 0.5, 2.0  # f(w) = A / 2 * (w - B)^2, from w = W0


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.full((1, 1), W0, dtype=torch.float64))


def algorithm1(steps, lr, beta1, wd, warmup, r, power, beta2=None, eps=0.0):
    """Defazio et al. 2024, Algorithm 1, on f: returns (x, y, z) after ``steps`` steps.

    y_t = (1 - beta1) z_t + beta1 x_t;  g_t = f'(y_t);
    lr_t = lr * min(1, t / warmup);
    z_{t+1} = z_t - lr_t (d_t + wd * y_t), d_t = g_t (SGD) or Adam's normalised g_t;
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},  c_{t+1} = w_t / sum_{i<=t} w_i,
    w_t = t^r * (max_{i<=t} lr_i)^power (the paper's lr_t^2 weighting with r = 0, power = 2).
    Adam: v_t = beta2 v_{t-1} + (1 - beta2) g_t^2, d_t = g_t / (sqrt(v_t / (1 - beta2^t)) + eps):
    schedulefree >= 1.3 bias-corrects v in the denominator, as AdamW does, where the paper's
    version scales lr_t by sqrt(1 - beta2^t) and leaves that factor out of the weights.
    """
    x = z = W0
    v, total, lr_max = 0.0, 0.0, 0.0
    for t in range(1, steps + 1):
        y = (1 - beta1) * z + beta1 * x
        g = A * (y - B)
        lr_t = lr * min(1.0, t / warmup) if warmup else lr
        if beta2 is None:
            d = g
        else:
            v = beta2 * v + (1 - beta2) * g * g
            d = g / (math.sqrt(v / (1 - beta2**t)) + eps)
        z = z - lr_t * (d + wd * y)
        lr_max = max(lr_max, lr_t)
        w = t**r * lr_max**power
        total += w
        c = w / total
        x = (1 - c) * x + c * z
    return x, (1 - beta1) * z + beta1 * x, z


def run(opt_params: dict, steps: int, ctx: BuildContext):
    m = One()
    opt, sched = build({"optimizer": opt_params, "schedule": {"name": "constant"}}, m, ctx)
    opt.train()
    for _ in range(steps):
        loss = A / 2 * (m.w - B).pow(2).sum()  # the gradient is taken where the weights are: y
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return m, opt


@pytest.mark.parametrize("warmup_epochs,r,power,wd", [(0, 0.0, 2.0, 0.0), (1.5, 1.0, 2.0, 0.1), (2.5, 0.5, 0.0, 0.3)])
def test_sf_sgd_follows_algorithm_1(warmup_epochs, r, power, wd):
    ctx = BuildContext(steps_per_epoch=2, epochs=5)  # warmup_epochs 1.5 -> 3 steps, 2.5 -> 5
    lr, mom, steps = 0.1, 0.8, 7
    m, opt = run({"name": "sf_sgd", "lr": lr, "momentum": mom, "weight_decay": wd, "warmup_epochs": warmup_epochs,
                  "r": r, "weight_lr_power": power}, steps, ctx)
    assert type(opt) is schedulefree.SGDScheduleFree
    x, y, z = algorithm1(steps, lr, mom, wd, round(warmup_epochs * 2), r, power)
    assert m.w.item() == pytest.approx(y, rel=1e-12)  # train mode: the weights hold y
    assert opt.state[m.w]["z"].item() == pytest.approx(z, rel=1e-12)
    opt.eval()
    assert m.w.item() == pytest.approx(x, rel=1e-12)  # eval mode: the average x
    assert abs(x - B) < abs(W0 - B)


@pytest.mark.parametrize("warmup_epochs,r,wd", [(0, 0.0, 0.0), (1.5, 1.0, 0.05)])
def test_sf_adamw_follows_algorithm_1(warmup_epochs, r, wd):
    ctx = BuildContext(steps_per_epoch=2, epochs=5)
    lr, b1, b2, eps, steps = 0.05, 0.9, 0.99, 1e-8, 6
    m, opt = run({"name": "sf_adamw", "lr": lr, "beta1": b1, "beta2": b2, "eps": eps, "weight_decay": wd,
                  "warmup_epochs": warmup_epochs, "r": r}, steps, ctx)
    assert type(opt) is schedulefree.AdamWScheduleFree
    x, y, z = algorithm1(steps, lr, b1, wd, round(warmup_epochs * 2), r, 2.0, beta2=b2, eps=eps)
    assert m.w.item() == pytest.approx(y, rel=1e-12) and opt.state[m.w]["z"].item() == pytest.approx(z, rel=1e-12)
    opt.eval()
    assert m.w.item() == pytest.approx(x, rel=1e-12)


def test_warmup_epochs_is_cut_to_end_before_the_run_and_rescales_with_the_budget():
    p = {"name": "sf_sgd", "warmup_epochs": 10}
    for spe, epochs, want in ((2, 5, 9), (4, 20, 40)):
        opt, _ = build({"optimizer": p, "schedule": {"name": "constant"}}, One(), BuildContext(spe, epochs))
        assert opt.param_groups[0]["warmup_steps"] == want


# ---- no lr schedule -----------------------------------------------------------------------


def test_a_schedule_is_refused_at_load_time_naming_file_key_and_value(tmp_path):
    base = {"trainer": {"name": "digits", "epochs": 2}, "study": {"storage": f"sqlite:///{tmp_path}/s.db"},
            "tracking": {"uri": f"sqlite:///{tmp_path}/m.db"}}
    cases = [
        ({"optimizer": "sf_adamw", "schedule": "cosine"}, "space.schedule", "cosine"),
        ({"optimizer": ["adamw", "sf_sgd"], "schedule": {"constant": {}, "onecycle": {}}}, "space.schedule", "onecycle"),
        ({"optimizer": "sf_sgd", "schedule": {"constant": {"warmup_epochs": {"choices": [0, 1]}}}},
         "space.schedule.constant.warmup_epochs", 1),
    ]
    for space, key, value in cases:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({**base, "space": space}))
        with pytest.raises(ConfigError) as info:
            config.load(str(path))
        err = info.value
        assert err.key == key and err.value == value and err.file == str(path), str(err)
        assert "\n" not in str(err) and str(err).startswith(f"{path}: {key} = {value!r}: ")
    path.write_text(yaml.safe_dump({**base, "space": {"optimizer": ["adamw", "sf_adamw"], "schedule": "constant"}}))
    config.load(str(path))  # constant without warmup: fine, beside other variants too
    with pytest.raises(ConfigError) as info:  # a stored point that breaks the rule
        resolve({"optimizer": {"name": "sf_adamw"}, "schedule": {"name": "constant", "warmup_epochs": 1}})
    assert info.value.key == "params.schedule.warmup_epochs"


def test_bad_knobs_are_refused():
    for variant, knob, bad in (("sf_sgd", "momentum", 1.0), ("sf_sgd", "momentum", 0.0), ("sf_adamw", "beta1", 0.0),
                               ("sf_adamw", "r", -1.0), ("sf_adamw", "warmup_epochs", -1), ("sf_sgd", "wd_schedule", "constant")):
        with pytest.raises(ConfigError) as info:
            Space.from_config({"optimizer": {variant: {knob: bad}}, "schedule": "constant"})
        assert info.value.key == f"space.optimizer.{variant}.{knob}"


# ---- train / eval modes, BatchNorm --------------------------------------------------------


def test_eval_mode_recomputes_batchnorm_at_the_averaged_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt, _ = build({"optimizer": {"name": "sf_sgd", "lr": 0.5}, "schedule": {"name": "constant"}}, model,
                   BuildContext(4, 1))
    batches = [torch.randn(8, 3) for _ in range(3)]
    train_mode(opt)
    model.train()
    for x in batches:
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    y_weight = model[0].weight.detach().clone()
    model.eval()
    assert eval_mode(opt, model, batches) == 3
    assert not torch.equal(model[0].weight, y_weight)  # x, not y
    with torch.no_grad():  # by hand: BatchNorm's input at x, per batch
        hidden = [model[0](x) for x in batches]
    assert torch.allclose(model[1].running_mean, torch.stack([h.mean(0) for h in hidden]).mean(0), atol=1e-6)
    assert torch.allclose(model[1].running_var, torch.stack([h.var(0) for h in hidden]).mean(0), atol=1e-6)
    assert not model.training and model[1].momentum == 0.1  # the model's mode and momentum restored
    train_mode(opt)
    assert torch.allclose(model[0].weight, y_weight, atol=1e-6)  # back to y
    with pytest.raises(ValueError, match="BatchNorm"):
        eval_mode(opt, model)  # a BatchNorm model needs batches


def test_the_helpers_are_no_ops_for_other_optimizers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt, _ = build({"optimizer": {"name": "adamw"}, "schedule": {"name": "constant"}}, model, BuildContext(4, 1))
    stats = model[1].running_mean.clone()
    ctx = TrialContext(0, 0)
    ctx.train_mode(opt)
    assert ctx.eval_mode(opt, model, lambda: pytest.fail("not called for AdamW")) == 0
    assert torch.equal(model[1].running_mean, stats)
    assert recompute_batchnorm(nn.Linear(2, 2), lambda: pytest.fail("no BatchNorm")) == 0


def test_digits_trainer_evaluates_the_average():
    trainer = DigitsTrainer(DigitsOptions(epochs=3))
    for name in ("sf_adamw", "sf_sgd"):
        params = {"optimizer": {"name": name, "warmup_epochs": 1}, "schedule": {"name": "constant"}}
        ctx = TrialContext(0, 0, torch.device("cpu"))
        metrics = trainer.fit(params, ctx)
        assert metrics["val_acc"] > 0.8 and metrics["test_acc"] > 0.8, (name, metrics)


def test_exported_note_and_helper():
    from optsearch.spaces.export import to_python

    text = to_python({"optimizer": {"name": "sf_adamw", "warmup_epochs": 1}, "schedule": {"name": "constant"}},
                     {"steps_per_epoch": 4, "epochs": 3})
    assert "optimizer.train()" in text and "optimizer.eval()" in text and "def recompute_batchnorm(" in text
    assert "import schedulefree" in text and "# Needs torch and schedulefree." in text
    assert "def build_optimizer(model, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS):" in text
    assert Path(schedulefree.__file__).exists()
