"""Export: the rendered module builds what ``spaces.build`` builds; ``export_trial`` on real
SQLite studies; hostile names and values stay inert."""

from __future__ import annotations

import ast
import importlib.util
import json

import optuna
import pytest
import torch
import yaml
from torch import nn

from optsearch.errors import ConfigError
from optsearch.search.exporting import export_trial
from optsearch.spaces import BuildContext, build
from optsearch.spaces.export import to_python
from optsearch.spaces.params import resolve
from optsearch.spaces.recipe import Call, render

optuna.logging.set_verbosity(optuna.logging.WARNING)

BUDGET = {"steps_per_epoch": 4, "epochs": 3, "batch_size": 8, "train_size": 32}

CASES = {
    "adamw-cosine-groups-held-decay": {
        "optimizer": {"name": "adamw", "lr": 3e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1,
                      "wd_schedule": "constant"},
        "schedule": {"name": "cosine", "warmup_epochs": 1, "warmup_start_factor": 0.1, "eta_min": 1e-5},
        "param_groups": {"no_decay_bias_norm": True, "head_lr_mult": 2.0, "layer_decay": 0.5},
    },
    "sgd-nesterov-onecycle": {
        "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        "schedule": {"name": "onecycle", "pct_start": 0.25, "base_momentum": 0.8, "max_momentum": 0.95},
        "param_groups": {"head_lr_mult": 0.5, "layer_decay": 0.8},
    },
    "amsgrad-l2-step-warmup": {
        "optimizer": {"name": "amsgrad", "lr": 1e-2, "decoupled": False, "weight_decay": 1e-3},
        "schedule": {"name": "step", "milestones": [0.5, 0.8], "gamma": 0.3, "warmup_epochs": 0.5},
        "param_groups": {"layer_decay": 0.7},
    },
    "nadamw-noam": {
        "optimizer": {"name": "nadamw", "lr": 5e-3, "weight_decay": 0.05, "momentum_decay": 0.01},
        "schedule": {"name": "noam", "warmup_epochs": 1.5},
        "param_groups": {"head_lr_mult": 4.0},
    },
    "adam_l2-sgdr": {
        "optimizer": {"name": "adam_l2", "lr": 1e-2, "weight_decay": 1e-4, "eps": 0.5},
        "schedule": {"name": "sgdr", "T_0": 0.5, "T_mult": 2, "eta_min": 1e-4},
        "param_groups": {"no_decay_bias_norm": False, "layer_decay": 0.9},
    },
    "adamw-normwd-onecycle-three-phase": {
        "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay_norm": 0.3},
        "schedule": {"name": "onecycle", "pct_start": 0.3, "three_phase": True, "anneal_strategy": "linear",
                     "div_factor": 10.0, "final_div_factor": 100.0},
        "param_groups": {"head_lr_mult": 3.0, "layer_decay": 0.6},
    },
    "sgd-constant": {
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.5},
        "schedule": {"name": "constant"},
        "param_groups": {},
    },
    "muon-cosine-groups-held-decay": {
        "optimizer": {"name": "muon", "lr": 0.03, "momentum": 0.9, "nesterov": False, "ns_steps": 4,
                      "weight_decay": 0.05, "adjust_lr_fn": "match_rms_adamw", "adamw_lr": 2e-3, "adamw_beta1": 0.8,
                      "adamw_beta2": 0.99, "adamw_eps": 1e-7, "adamw_weight_decay": 0.01, "wd_schedule": "constant"},
        "schedule": {"name": "cosine", "warmup_epochs": 1, "eta_min": 0.1},
        "param_groups": {"head_lr_mult": 2.0, "layer_decay": 0.5},
    },
    "muon-onecycle": {
        "optimizer": {"name": "muon", "weight_decay": 0.01, "adamw_weight_decay": 0.1},
        "schedule": {"name": "onecycle", "cycle_momentum": False, "pct_start": 0.25},
        "param_groups": {"no_decay_bias_norm": False},
    },
    "sf_adamw-warmup-groups": {
        "optimizer": {"name": "sf_adamw", "lr": 5e-3, "beta1": 0.8, "beta2": 0.99, "weight_decay": 0.01,
                      "warmup_epochs": 1, "r": 1.0, "weight_lr_power": 1.0},
        "schedule": {"name": "constant"},
        "param_groups": {"head_lr_mult": 3.0},
    },
    "sf_sgd-layer-decay": {
        "optimizer": {"name": "sf_sgd", "lr": 0.5, "momentum": 0.8, "weight_decay": 1e-3, "warmup_epochs": 0.5},
        "schedule": {"name": "constant"},
        "param_groups": {"layer_decay": 0.7},
    },
    "radam-l2-step": {
        "optimizer": {"name": "radam", "lr": 1e-2, "beta1": 0.85, "decoupled": False, "weight_decay": 1e-3},
        "schedule": {"name": "step", "milestones": [0.5, 0.8], "gamma": 0.3},
        "param_groups": {"head_lr_mult": 0.5},
    },
    "radam-decoupled-onecycle": {
        "optimizer": {"name": "radam", "lr": 3e-3, "weight_decay": 0.05, "wd_schedule": "constant"},
        "schedule": {"name": "onecycle", "pct_start": 0.3},
        "param_groups": {},
    },
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))


def train(model, optimizer, scheduler, steps: int):
    """A real training loop; returns every step's per-group lrs and momenta."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    lrs, moms = [], []
    getattr(optimizer, "train", lambda: None)()  # schedule-free: steps in train mode only
    for k in range(steps):
        idx = torch.arange(8) + 8 * (k % 4)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        lrs.append([g["lr"] for g in optimizer.param_groups])
        moms.append([g["betas"][0] if "betas" in g else g["momentum"] for g in optimizer.param_groups])
        optimizer.step()
        # schedule-free: the lr its step used (its own warmup)
        lrs[-1] += [g["scheduled_lr"] for g in optimizer.param_groups if "scheduled_lr" in g]
        scheduler.step()
    getattr(optimizer, "eval", lambda: None)()  # schedule-free: the weights hold the average
    return lrs, moms


def load_module(text: str, tmp_path, name: str, how: str):
    if how == "exec":
        namespace: dict = {"__name__": "exported"}
        exec(compile(text, "<exported>", "exec"), namespace)  # noqa: S102 - the test's point
        return namespace
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"exported_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def check_self_contained(text: str, allowed=("functools", "math", "torch")) -> ast.Module:
    tree = ast.parse(text)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Name):
            assert "optsearch" not in node.id
    assert imported <= set(allowed)
    for stmt in tree.body:
        assert isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Assign, ast.FunctionDef, ast.ClassDef)), \
            ast.dump(stmt)[:80]
    return tree


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_module_reproduces_build(case, tmp_path):
    params = CASES[case]
    text = to_python(params, BUDGET)
    schedule_free = params["optimizer"]["name"].startswith("sf_")
    check_self_contained(text, ("functools", "math", "torch", "schedulefree") if schedule_free else
                         ("functools", "math", "torch"))
    steps = BUDGET["steps_per_epoch"] * BUDGET["epochs"]

    model = make_model()
    ctx = BuildContext(**BUDGET)
    optimizer, scheduler = build(params, model, ctx)
    want_lrs, want_moms = train(model, optimizer, scheduler, steps)

    for how in ("exec", "import"):
        ns = load_module(text, tmp_path, case.replace("-", "_"), how)
        assert not any("optsearch" in (getattr(v, "__module__", None) or "") for v in ns.values())
        model2 = make_model()
        optimizer2 = ns["build_optimizer"](model2)
        scheduler2 = ns["build_scheduler"](optimizer2, BUDGET["steps_per_epoch"], BUDGET["epochs"])
        if params["optimizer"]["name"] == "muon":  # the class itself is in the module (its source, copied)
            assert type(optimizer2).__name__ == "MuonWithAdamW" and type(optimizer2) is ns["MuonWithAdamW"]
            assert [g["use_muon"] for g in optimizer2.param_groups] == [g["use_muon"] for g in optimizer.param_groups]
        else:
            assert type(optimizer2) is type(optimizer)
        assert type(scheduler2) is type(scheduler)
        lrs, moms = train(model2, optimizer2, scheduler2, steps)
        assert lrs == want_lrs and moms == want_moms  # the whole run, every group, exactly
        for (n, a), b in zip(model.named_parameters(), model2.parameters()):
            assert torch.equal(a, b), n
        if case != "sgd-constant":
            assert len({lr for row in lrs for lr in row}) > 1  # the schedule and groups did vary the lr


class Unseen(nn.Module):
    """A model no muon case was written for: an embedding, a Conv1d, a GroupNorm, a
    transformer block, a scalar parameter of its own, a classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.embed = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.classifier = nn.Linear(8, 4)

    def forward(self, idx):
        h = self.norm(torch.relu(self.conv(self.embed(idx).transpose(1, 2)))).transpose(1, 2)
        return self.classifier(self.block(h).mean(1) * self.temperature)


def test_exported_muon_trains_every_tensor_of_an_unseen_model(tmp_path):
    params = CASES["muon-cosine-groups-held-decay"]
    ns = load_module(to_python(params, BUDGET), tmp_path, "muon_unseen", "import")
    gen = torch.Generator().manual_seed(2)
    idx, target = torch.randint(0, 20, (16, 6), generator=gen), torch.randint(0, 4, (16,), generator=gen)

    def run(model, optimizer, scheduler):
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(idx), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    model, trial_model = Unseen(), Unseen()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = ns["build_optimizer"](model)
    sides = {n: g["use_muon"] for g in optimizer.param_groups for n, p in model.named_parameters()
             if any(p is q for q in g["params"])}
    assert sides == {  # by hand: hidden matrices and the conv filter to Muon, the rest to AdamW
        "embed.weight": False, "conv.weight": True, "conv.bias": False, "norm.weight": False, "norm.bias": False,
        "block.self_attn.in_proj_weight": True, "block.self_attn.in_proj_bias": False,
        "block.self_attn.out_proj.weight": True, "block.self_attn.out_proj.bias": False,
        "block.linear1.weight": True, "block.linear1.bias": False, "block.linear2.weight": True,
        "block.linear2.bias": False, "block.norm1.weight": False, "block.norm1.bias": False,
        "block.norm2.weight": False, "block.norm2.bias": False, "temperature": False,
        "classifier.weight": False, "classifier.bias": False,
    }
    run(model, optimizer, ns["build_scheduler"](optimizer))
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []  # every tensor trained
    run(trial_model, *build(params, trial_model, BuildContext(**BUDGET)))  # the trial's own build: the same run
    for (n, a), b in zip(model.named_parameters(), trial_model.parameters()):
        assert torch.equal(a, b), n


def test_exported_scheduler_defaults_to_the_trial_budget_and_rescales():
    params = CASES["adamw-cosine-groups-held-decay"]
    ns = load_module(to_python(params, BUDGET), None, "x", "exec")
    assert ns["STEPS_PER_EPOCH"] == 4 and ns["EPOCHS"] == 3 and ns["PARAMS"] == resolve(params)
    for spe, epochs in ((4, 3), (10, 7)):
        m1, m2 = make_model(), make_model()
        o1, s1 = build(params, m1, BuildContext(spe, epochs, 8, 32))
        o2 = ns["build_optimizer"](m2)
        s2 = ns["build_scheduler"](o2) if (spe, epochs) == (4, 3) else ns["build_scheduler"](o2, spe, epochs)
        for _ in range(spe * epochs):
            assert [g["lr"] for g in o1.param_groups] == [g["lr"] for g in o2.param_groups]
            o1.step(), o2.step(), s1.step(), s2.step()


def test_normalized_weight_decay_is_written_as_its_value_with_the_formula():
    text = to_python(CASES["adamw-normwd-onecycle-three-phase"], BUDGET)
    want = 0.3 * (8 / (32 * 3)) ** 0.5
    assert f"weight_decay={want!r}" in text and "sqrt(batch_size / (train_size * epochs))" in text


# ---- hostile text -------------------------------------------------------------------------

HOSTILE = 'evil"""\'\'\'\nHACKED = 1\r\nimport os; HACKED = 2\u2028# -*- coding: latin-1 -*-\\'


def test_header_and_strings_are_inert():
    text = to_python(CASES["sgd-constant"], BUDGET, header="# -*- coding: latin-1 -*-\n" + HOSTILE)
    lines = text.splitlines()
    assert lines[0].startswith("# Exported by optsearch") and lines[1].startswith("# Needs only torch")
    check_self_contained(text)
    ns = load_module(text, None, "x", "exec")
    assert "HACKED" not in ns and "os" not in ns
    # a string literal is written by repr and reads back unchanged
    src = render(Call("torch.optim.SGD", (), {"note": HOSTILE}))
    call = ast.parse(src, mode="eval").body
    assert ast.literal_eval(call.keywords[0].value) == HOSTILE


def test_hostile_param_values_are_rejected_not_rendered():
    for bad in (
        {**CASES["sgd-constant"], "schedule": {"name": "onecycle", "anneal_strategy": "cos'); import os #"}},
        {**CASES["sgd-constant"], "optimizer": {"name": "sgd", "lr": "0.1) or __import__('os'"}},
        {**CASES["sgd-constant"], "schedule": {"name": "step", "milestones": ["0.5 * __import__('os')"]}},
        {**CASES["sgd-constant"], "param_groups": {"head_lr_mult; import os": 1.0}},
    ):
        with pytest.raises(ConfigError):
            to_python(bad, BUDGET)
    with pytest.raises(ConfigError) as info:
        to_python(CASES["sgd-constant"], {**BUDGET, "epochs": "3; import os"})
    assert info.value.key == "build.epochs"


# ---- export_trial on a real SQLite study ---------------------------------------------------


def make_study(tmp_path, name: str) -> str:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    for value, case in ((0.5, "sgd-constant"), (0.9, "adamw-cosine-groups-held-decay"), (0.7, "nadamw-noam")):
        trial = study.ask()
        trial.set_user_attr("params", CASES[case])
        trial.set_user_attr("build", BUDGET)
        study.tell(trial, value)
    trial = study.ask()  # a trial that failed before recording anything
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return storage


def test_export_trial_python_yaml_json(tmp_path):
    storage = make_study(tmp_path, "cifar10-adamw")
    text = export_trial(storage, "cifar10-adamw")  # best: trial 1
    assert "# trial: 1" in text and "0.9" in text
    check_self_contained(text)
    ns = load_module(text, tmp_path, "best", "import")
    m1, m2 = make_model(), make_model()
    o1, s1 = build(CASES["adamw-cosine-groups-held-decay"], m1, BuildContext(**BUDGET))
    o2 = ns["build_optimizer"](m2)
    assert train(m1, o1, s1, 12) == train(m2, o2, ns["build_scheduler"](o2), 12)

    doc = yaml.safe_load(export_trial(storage, "cifar10-adamw", fmt="yaml"))
    assert doc["trial"] == 1 and doc["value"] == 0.9 and doc["study"] == "cifar10-adamw"
    assert doc["params"] == resolve(CASES["adamw-cosine-groups-held-decay"]) and doc["build"] == BUDGET

    doc = json.loads(export_trial(storage, "cifar10-adamw", trial_number=2, fmt="json"))
    assert doc["trial"] == 2 and doc["params"] == resolve(CASES["nadamw-noam"]) and doc["build"] == BUDGET
    assert "noam_lambda" in export_trial(storage, "cifar10-adamw", trial_number=2)


def test_export_trial_errors(tmp_path):
    storage = make_study(tmp_path, "s")
    cases = [
        (dict(study_name="nope"), "study", "nope"),
        (dict(study_name="s", trial_number=9), "--trial", 9),
        (dict(study_name="s", trial_number=3), "--trial", 3),  # failed, no params
        (dict(study_name="s", fmt="toml"), "--format", "toml"),
    ]
    for kwargs, key, value in cases:
        with pytest.raises(ConfigError) as info:
            export_trial(storage, **kwargs)
        assert info.value.key == key and info.value.value == value
        assert repr(value) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        export_trial(f"sqlite:///{tmp_path / 'absent.db'}", "s")
    assert info.value.key == "--storage" and not (tmp_path / "absent.db").exists()
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(storage=empty, study_name="e")
    with pytest.raises(ConfigError) as info:
        export_trial(empty, "e")
    assert info.value.key == "study" and "no finished trials" in str(info.value)


def test_export_trial_hostile_study_name_and_values(tmp_path):
    storage = make_study(tmp_path, HOSTILE)
    text = export_trial(storage, HOSTILE)
    lines = text.splitlines()
    assert lines[0].startswith("# Exported by optsearch")
    assert all(line.startswith("#") for line in lines[: lines.index("import functools") - 1])
    check_self_contained(text)
    ns = load_module(text, tmp_path, "hostile", "import")
    assert "HACKED" not in ns and "build_optimizer" in ns
    assert yaml.safe_load(export_trial(storage, HOSTILE, fmt="yaml"))["study"] == HOSTILE
    assert json.loads(export_trial(storage, HOSTILE, fmt="json"))["study"] == HOSTILE

    study = optuna.load_study(study_name=HOSTILE, storage=storage)
    trial = study.ask()
    trial.set_user_attr("params", {**CASES["sgd-constant"],
                                   "schedule": {"name": "onecycle", "anneal_strategy": HOSTILE}})
    trial.set_user_attr("build", BUDGET)
    study.tell(trial, 1.0)  # now the best
    for fmt in ("python", "yaml", "json"):
        with pytest.raises(ConfigError) as info:
            export_trial(storage, HOSTILE, fmt=fmt)
        assert info.value.key == "--trial" and "anneal_strategy" in str(info.value)
        assert "\n" not in str(info.value) and "\r" not in str(info.value)


def test_the_exported_module_imports_only_what_it_uses():
    plain = to_python(CASES["sgd-constant"], BUDGET)
    assert "import functools" not in plain and "import math" not in plain
    noam = to_python(CASES["nadamw-noam"], BUDGET)  # functools.partial(noam_lambda, ...), math.sqrt in it
    assert "import functools" in noam and "functools.partial(" in noam
    assert "import math" in noam and "math.sqrt(" in noam
