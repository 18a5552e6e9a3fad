"""Search spaces: parsing, conditional knobs, bad spaces, and the shipped CIFAR-10 configs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import schedulefree
import torch
import yaml
from torch import nn

from optsearch.errors import ConfigError
from optsearch.spaces import BuildContext, Space, build
from optsearch.spaces.muon import MuonWithAdamW
from optsearch.spaces.params import resolve

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CIFAR_CONFIGS = ["cifar10-sgd.yaml", "cifar10-adam-l2.yaml", "cifar10-adamw.yaml", "cifar10-amsgrad.yaml",
                 "cifar10-adamw-sgdr.yaml", "cifar10-onecycle.yaml", "cifar10-muon.yaml",
                 "cifar10-schedulefree.yaml"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(space: Space, n: int = 1, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((space.sample(trial), dict(trial.params)))
        study.tell(trial, 0.0)
    return out


def error(spec) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Space.from_config(spec)
    return info.value


# ---- bad spaces -------------------------------------------------------------------------


def test_t_mult_without_sgdr_names_its_owner():
    err = error({"schedule": {"cosine": {"T_mult": 2}}})
    assert err.key == "space.schedule.cosine.T_mult" and err.value == 2
    assert "space.schedule.cosine.T_mult = 2" in str(err) and "sgdr" in str(err)


def test_negative_lr():
    err = error({"optimizer": {"adamw": {"lr": -0.1}}})
    assert err.key == "space.optimizer.adamw.lr" and "-0.1" in str(err) and "> 0" in str(err)
    err = error({"optimizer": {"sgd": {"lr": {"low": -1.0, "high": 1.0}}}})
    assert err.key == "space.optimizer.sgd.lr" and "-1.0" in str(err)


def test_unknown_variant():
    err = error({"optimizer": {"lion": {"lr": 1e-4}}})
    assert err.key == "space.optimizer" and err.value == "lion" and "'lion'" in str(err) and "adamw" in str(err)
    err = error({"optimizer": ["adamw", "rmsprop"]})
    assert err.value == "rmsprop" and "'rmsprop'" in str(err)


def test_low_above_high_and_other_range_errors_come_from_optuna():
    err = error({"optimizer": {"adamw": {"lr": {"low": 0.1, "high": 0.01, "log": True}}}})
    assert err.key == "space.optimizer.adamw.lr" and "low <= high" in str(err) and "0.01" in str(err)
    err = error({"optimizer": {"adamw": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}})
    assert err.key == "space.optimizer.adamw.lr" and "low > 0" in str(err)
    # Optuna would shrink [0, 1] to [0, 0.9] to fit the step; the knob must sample what is written
    err = error({"optimizer": {"adamw": {"beta1": {"low": 0.0, "high": 0.95, "step": 0.1}}}})
    assert err.key == "space.optimizer.adamw.beta1" and "0.9" in str(err)


def test_inconsistent_combinations_are_rejected_before_sampling():
    # momentum's range reaches 0, where Nesterov is undefined
    err = error({"optimizer": {"sgd": {"nesterov": True, "momentum": {"low": 0.0, "high": 0.9}}}})
    assert err.key == "space.optimizer.sgd.nesterov" and "momentum" in str(err)
    err = error({"schedule": {"onecycle": {"base_momentum": {"low": 0.8, "high": 0.95}, "max_momentum": 0.9}}})
    assert err.key == "space.schedule.onecycle.base_momentum"
    err = error({"optimizer": {"amsgrad": {"decoupled": {"choices": [True, False]}, "wd_schedule": "constant"}}})
    assert err.key == "space.optimizer.amsgrad.wd_schedule"
    err = error({"optimizer": {"sgd": {"wd_schedule": "constant"}}})
    assert err.key == "space.optimizer.sgd.wd_schedule" and "decoupled" in str(err)


def test_bad_knob_values_and_list_knobs():
    assert error({"schedule": {"sgdr": {"T_mult": 1.5}}}).key == "space.schedule.sgdr.T_mult"
    assert error({"schedule": {"onecycle": {"anneal_strategy": "cosine"}}}).value == "cosine"
    assert error({"schedule": {"step": {"milestones": [0.75, 0.5]}}}).key == "space.schedule.step.milestones"
    assert error({"schedule": {"step": {"milestones": {"choices": [0.5]}}}}).key == "space.schedule.step.milestones"
    err = error({"optimizer": {"adamw": {"beta2": {"one_minus": {"low": 0.0, "high": 0.1, "log": True}}}}})
    assert err.key == "space.optimizer.adamw.beta2.one_minus" and "low > 0" in str(err)
    assert error({"param_groups": {"layer_decay": 0.0}}).key == "space.param_groups.layer_decay"
    assert error({"param_groups": {"layers": "blocks"}}).key == "space.param_groups.layers"


def test_bad_params_are_config_errors_too():
    good = {"optimizer": {"name": "adamw"}, "schedule": {"name": "cosine"}}
    assert resolve(good)["optimizer"]["lr"] == 1e-3
    for bad, key in [
        ({**good, "optimizer": {"name": "adamw", "lr": "1e-3"}}, "params.optimizer.lr"),
        ({**good, "optimizer": {"name": "adamw", "T_mult": 2}}, "params.optimizer.T_mult"),
        ({**good, "schedule": {"name": "cosine'); import os; ('"}}, "params.schedule.name"),
        ({**good, "schedule": {"name": "onecycle", "anneal_strategy": "cos'\nimport os"}},
         "params.schedule.anneal_strategy"),
    ]:
        with pytest.raises(ConfigError) as info:
            build(bad, nn.Linear(2, 2), BuildContext(4, 2))
        assert info.value.key == key


# ---- sampling ---------------------------------------------------------------------------


def test_one_minus_log_and_eps_up_to_one():
    space = Space.from_config({"optimizer": {"adamw": {
        "beta1": {"one_minus": {"low": 1e-3, "high": 0.5, "log": True}},
        "beta2": {"one_minus": {"low": 1e-4, "high": 0.1, "log": True}},
        "eps": {"low": 1e-10, "high": 1.0, "log": True},
    }}})
    for params, raw in sample(space, 20):
        opt = params["optimizer"]
        assert 0.5 <= opt["beta1"] <= 1 - 1e-3 and 0.9 <= opt["beta2"] <= 1 - 1e-4
        assert opt["beta1"] == pytest.approx(1 - raw["adamw.beta1.one_minus"])
        assert 1e-10 <= opt["eps"] <= 1.0
    s = Space.from_config({"optimizer": {"adamw": {"beta2": {"one_minus": {"low": 1e-4, "high": 0.1, "log": True}}}}})
    study = optuna.create_study()
    trial = study.ask()
    s.sample(trial)
    assert trial.distributions["adamw.beta2.one_minus"].log


def test_knobs_are_conditional_on_their_schedule_and_variant():
    space = Space.from_config({
        "optimizer": {"adamw": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
                      "sgd": {"lr": {"low": 1e-2, "high": 1.0, "log": True}, "nesterov": {"choices": [True, False]}}},
        "schedule": {"cosine": {"warmup_epochs": {"low": 0, "high": 2}},
                     "sgdr": {"T_0": {"choices": [1, 2]}, "T_mult": {"low": 1, "high": 3}}},
    })
    seen = set()
    for params, raw in sample(space, 30):
        o, s = params["optimizer"]["name"], params["schedule"]["name"]
        seen.add((o, s))
        own = {k.split(".")[0] for k in raw if "." in k}
        assert own == {o, s}  # only the chosen variant's and schedule's knobs were sampled
        if s == "sgdr":
            assert "sgdr.T_mult" in raw and params["schedule"]["T_mult"] in (1, 2, 3)
        else:
            assert "T_mult" not in params["schedule"]
    assert len(seen) == 4


def test_single_variant_is_not_a_categorical():
    space = Space.from_config({"optimizer": "sgd", "schedule": "noam"})
    (params, raw), = sample(space)
    assert params["optimizer"]["name"] == "sgd" and params["schedule"]["name"] == "noam"
    assert "optimizer" not in raw and "schedule" not in raw


# ---- knobs a schedule replaces -------------------------------------------------------------


def test_a_momentum_knob_that_onecycle_always_replaces_is_refused():
    err = error({"optimizer": {"sgd": {"momentum": {"low": 0.8, "high": 0.95}}}, "schedule": "onecycle"})
    assert err.key == "space.optimizer.sgd.momentum" and "cycle_momentum" in err.message
    err = error({"optimizer": {"adamw": {"beta1": 0.8}}, "schedule": {"onecycle": {"cycle_momentum": True}}})
    assert err.key == "space.optimizer.adamw.beta1"
    # without momentum cycling the knob matters
    Space.from_config({"optimizer": {"sgd": {"momentum": 0.8}}, "schedule": {"onecycle": {"cycle_momentum": False}}})


def test_a_momentum_knob_is_sampled_only_where_the_schedule_keeps_it():
    space = Space.from_config({
        "optimizer": {"sgd": {"momentum": {"one_minus": {"low": 0.01, "high": 0.5, "log": True}}}},
        "schedule": {"sgdr": {}, "onecycle": {"max_momentum": {"low": 0.9, "high": 0.99}}},
    })
    assert any("space.optimizer.sgd.momentum" in n and "one-cycle" in n for n in space.notes)
    seen = set()
    for params, raw in sample(space, 30):
        name = params["schedule"]["name"]
        seen.add(name)
        if name == "onecycle":  # the optimizer starts at max_momentum; nothing is stored for momentum
            assert "sgd.momentum.one_minus" not in raw
            assert params["optimizer"]["momentum"] == params["schedule"]["max_momentum"] == raw["onecycle.max_momentum"]
        else:
            assert params["optimizer"]["momentum"] == pytest.approx(1 - raw["sgd.momentum.one_minus"])
    assert seen == {"sgdr", "onecycle"}


def test_resolve_records_the_momentum_the_schedule_imposes():
    p = resolve({"optimizer": {"name": "sgd", "momentum": 0.5},
                 "schedule": {"name": "onecycle", "max_momentum": 0.97}})
    assert p["optimizer"]["momentum"] == 0.97  # what OneCycleLR sets the optimizer to at step 0
    opt, _ = build(p, nn.Linear(2, 2), BuildContext(10, 2))
    assert opt.param_groups[0]["momentum"] == 0.97


# ---- points the builders reject ----------------------------------------------------------


def test_rejected_points_are_told_at_load_time_and_a_space_of_only_those_is_an_error():
    space = Space.from_config({"schedule": {"step": {"milestones": [0.1, 0.5], "warmup_epochs": {"choices": [0, 2]}}}})
    notes = space.rejections(BuildContext(18, 10))
    assert len(notes) == 1 and "space.schedule.step.milestones" in notes[0] and "'warmup_epochs': 2" in notes[0]
    assert Space.from_config({"schedule": {"step": {"milestones": [0.5]}}}).rejections(BuildContext(18, 10)) == []
    always = Space.from_config({"schedule": {"step": {"milestones": [0.1], "warmup_epochs": {"choices": [2, 3]}}}})
    with pytest.raises(ConfigError) as info:
        always.rejections(BuildContext(18, 10))
    assert info.value.key == "space.schedule.step.milestones" and "every point" in info.value.message


# ---- shipped configs --------------------------------------------------------------------

TORCH_CLASS = {"sgd": torch.optim.SGD, "adam_l2": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "nadamw": torch.optim.NAdam, "radam": torch.optim.RAdam, "muon": MuonWithAdamW,
               "sf_adamw": schedulefree.AdamWScheduleFree, "sf_sgd": schedulefree.SGDScheduleFree}


@pytest.mark.parametrize("name", CIFAR_CONFIGS)
def test_cifar10_configs_parse_sample_and_build(name):
    text = (CONFIGS / name).read_text()
    assert text.startswith("#")  # a header says what the study is about
    doc = yaml.safe_load(text)
    assert set(doc) >= {"study", "trainer", "space", "workers"}
    assert doc["study"]["name"] == name[: -len(".yaml")]
    assert doc["trainer"]["name"] == "cifar10"
    space = Space.from_config(doc["space"])
    epochs, batch = doc["trainer"]["epochs"], doc["trainer"]["batch_size"]
    ctx = BuildContext(-(-45_000 // batch), epochs, batch, 45_000)
    assert space.rejections(ctx) == []  # no sampled point is rejected at the shipped budget
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 10))
    for params, _ in sample(space, 8, seed=1):
        optimizer, _ = build(params, model, ctx)
        variant = params["optimizer"]
        want = (torch.optim.AdamW if variant.get("decoupled") else torch.optim.Adam) if variant["name"] == "amsgrad" \
            else TORCH_CLASS[variant["name"]]
        assert type(optimizer) is want
        peaks = {g.get("max_lr", g.get("initial_lr", g["lr"])) for g in optimizer.param_groups}  # the peak lr
        # no group multipliers in these configs; muon: Muon's lr (conv filters) and AdamW's
        assert peaks == ({variant["lr"], variant["adamw_lr"]} if variant["name"] == "muon" else {variant["lr"]})


@pytest.mark.parametrize("t0,t_mult,restarts", [(1.0, 1, list(range(1, 10))), (2.0, 1, [2, 4, 6, 8]), (5.0, 1, [5]),
                                                 (3.333, 2, [3.333]), (1.0, 2, [1, 3, 7])])
def test_shipped_sgdr_config_restarts_where_its_comment_says(t0, t_mult, restarts):
    # cifar10-adamw-sgdr.yaml's header: T_mult 1 with T_0 1, 2, 5 and T_mult 2 with 3.333 end
    # the last cycle with the 10-epoch run; T_0 1 with T_mult 2 restarts at 1, 3, 7.
    doc = yaml.safe_load((CONFIGS / "cifar10-adamw-sgdr.yaml").read_text())
    assert t0 in doc["space"]["schedule"]["sgdr"]["T_0"]["choices"]
    spe, epochs = -(-45_000 // doc["trainer"]["batch_size"]), doc["trainer"]["epochs"]
    p = {"optimizer": {"name": "adamw", "lr": 1.0}, "schedule": {"name": "sgdr", "T_0": t0, "T_mult": t_mult}}
    opt, sched = build(p, nn.Linear(2, 2), BuildContext(spe, epochs, 512, 45_000))
    lrs = []
    for _ in range(spe * epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [k for k in range(1, len(lrs)) if lrs[k] > lrs[k - 1]] == [round(e * spe) for e in restarts]
    ends_with_run = t0 * sum(t_mult ** i for i in range(len(restarts) + 1)) == pytest.approx(epochs, abs=0.01)
    assert (lrs[-1] < 1e-3) == ends_with_run  # annealed at the end exactly when the cycles end with the run


@pytest.mark.parametrize("name", CIFAR_CONFIGS)
def test_cifar10_configs_pass_the_config_loader(name):
    config = pytest.importorskip("optsearch.search.config")
    doc = yaml.safe_load((CONFIGS / name).read_text())
    cfg = config.validate(doc, path=str(CONFIGS / name))
    assert cfg.study.name == name[: -len(".yaml")] and cfg.study.pruner.name == "hyperband"
