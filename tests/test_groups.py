"""Param groups on real model shapes: which parameter gets which lr and decay, by hand.

Each expected table below is written from the model's definition (which module is the
head, which block is how many layers below it), not computed by the code under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optsearch.errors import ConfigError, PointRejected
from optsearch.spaces import BuildContext, build
from optsearch.spaces.groups import GroupsError, param_groups
from optsearch.trainers.base import TrialContext

LR, WD = 0.1, 0.05


def table(model, **kw) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight_decay) as the groups assign them."""
    groups = param_groups(model, LR, WD, **kw)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    inner = getattr(model, "_orig_mod", model)
    names = dict(inner.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(by_id) == len(names)  # each parameter once
    return {n: by_id[id(p)] for n, p in names.items()}


def approx(d: dict) -> dict:
    return {k: pytest.approx(v, rel=1e-12) for k, v in d.items()}


class Wrapped(nn.Module):
    """The whole network in one container."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


class HeadFirst(nn.Module):
    """The classifier registered before the features it reads."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.features = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm((6,)))

    def forward(self, x):
        return self.fc(self.features(x))


class Norms(nn.Module):
    """A 2-D LayerNorm weight, a hand-written RMSNorm, a 1-D scale that is not a norm."""

    class RMSNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8, bias=False)
        self.ln = nn.LayerNorm((4, 8))
        self.rms = Norms.RMSNorm(8)
        self.gamma = nn.Parameter(torch.ones(8))  # a LayerScale: 1-D but decayed
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(8, 2)

    def forward(self, x):  # x: (B, 4, 8)
        x = self.rms(self.ln(self.proj(x))) * self.gamma
        return self.out(self.bn(x))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class ViT(nn.Module):
    """Patch embedding, a class token and position embedding on the model, a ModuleList of
    blocks, a final norm and a head."""

    def __init__(self, d=8, depth=3):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, d))
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):  # (B, 3, 8, 8) -> 4 patches + the class token
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class TiedLM(nn.Module):
    """A language model whose output layer shares the embedding's weight (nanoGPT style)."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.block = Block(d)
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        return self.lm_head(self.ln_f(self.block(self.wte(idx))))


class FunctionalTiedLM(TiedLM):
    """Tied by using the embedding matrix as the output projection."""

    def forward(self, idx):
        return F.linear(self.ln_f(self.block(self.wte(idx))), self.wte.weight)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = self.a(x)
        return self.b(x)


def test_wrapped_model_head_is_the_last_layer_inside_the_container():
    t = table(Wrapped(), head_lr_mult=10.0, layer_decay=0.5)
    assert t == approx({
        "net.0.weight": (LR * 0.25, WD), "net.0.bias": (LR * 0.25, 0.0),
        "net.2.weight": (LR * 0.5, WD), "net.2.bias": (LR * 0.5, 0.0),
        "net.4.weight": (LR * 10, WD), "net.4.bias": (LR * 10, 0.0),
    })


def test_compiled_model_is_split_like_the_model():
    model = Wrapped()
    compiled = torch.compile(model)
    assert table(compiled, head_lr_mult=10.0, layer_decay=0.5) == table(model, head_lr_mult=10.0, layer_decay=0.5)
    opt, _ = build({"optimizer": {"name": "sgd", "lr": LR}, "schedule": {"name": "constant"},
                    "param_groups": {"head_lr_mult": 3.0}}, compiled, BuildContext(2, 1))
    head = {id(p) for p in model.net[4].parameters()}
    head_lrs = [g["lr"] for g in opt.param_groups if any(id(p) in head for p in g["params"])]
    assert head_lrs == [pytest.approx(LR * 3)] * 2  # the weight's group and the bias's


def test_head_first_model_head_is_found_in_forward_order():
    t = table(HeadFirst(), head_lr_mult=4.0, layer_decay=0.5)
    assert t == approx({
        "fc.weight": (LR * 4, WD), "fc.bias": (LR * 4, 0.0),
        "features.0.weight": (LR * 0.25, WD), "features.0.bias": (LR * 0.25, 0.0),
        "features.1.weight": (LR * 0.5, 0.0), "features.1.bias": (LR * 0.5, 0.0),
    })


def test_head_named_by_the_user():
    t = table(HeadFirst(), head_lr_mult=4.0, head="features.1")
    assert t["features.1.weight"] == pytest.approx((LR * 4, 0.0))
    assert t["fc.weight"] == pytest.approx((LR, WD)) and t["features.0.weight"] == pytest.approx((LR, WD))
    with pytest.raises(GroupsError, match="'nope': no such module"):
        table(HeadFirst(), head_lr_mult=4.0, head="nope")


def test_vit_decays_per_block_and_its_tokens_join_the_first_layer():
    d = 0.5
    t = table(ViT(), head_lr_mult=2.0, layer_decay=d)
    # body in forward order: patch_embed, blocks.0, blocks.1, blocks.2, norm; then the head
    depth = {"patch_embed": 5, "cls_token": 5, "pos_embed": 5, "blocks.0": 4, "blocks.1": 3, "blocks.2": 2,
             "norm": 1}
    for name, (lr, wd) in t.items():
        if name.startswith("head."):
            assert lr == pytest.approx(LR * 2.0), name
        else:
            k = next(v for prefix, v in depth.items() if name == prefix or name.startswith(prefix + "."))
            assert lr == pytest.approx(LR * d ** k), name
        no_decay = name.endswith("bias") or ".norm." in name or name.startswith("norm.")
        assert wd == (0.0 if no_decay else WD), name
    assert t["cls_token"][1] == WD and t["pos_embed"][1] == WD  # not norms, not biases


def test_vit_layers_listed_by_hand():
    t = table(ViT(), layer_decay=0.5, layers=["patch_embed", "blocks.*", "head"])
    # listed: patch_embed, blocks.0-2, head (the head is the last one); norm is in no layer
    # and joins the first, like the model's own tokens
    assert t["head.weight"][0] == pytest.approx(LR)
    assert t["blocks.2.fc.weight"][0] == pytest.approx(LR * 0.5)
    assert t["blocks.0.fc.weight"][0] == pytest.approx(LR * 0.125)
    assert t["patch_embed.weight"][0] == pytest.approx(LR * 0.0625)
    assert t["norm.weight"][0] == pytest.approx(LR * 0.0625)
    with pytest.raises(GroupsError, match="'trunk'"):
        table(ViT(), layer_decay=0.5, layers=["trunk.*", "head"])


def test_norm_parameters_by_type_not_by_shape():
    t = table(Norms())
    assert t["ln.weight"] == (LR, 0.0) and t["ln.bias"] == (LR, 0.0)  # LayerNorm((4, 8)): 2-D, no decay
    assert t["rms.scale"] == (LR, 0.0)  # a hand-written RMSNorm
    assert t["bn.weight"] == (LR, 0.0) and t["bn.bias"] == (LR, 0.0)
    assert t["gamma"] == (LR, WD)  # 1-D but not a norm: decayed
    assert t["proj.weight"] == (LR, WD) and t["out.weight"] == (LR, WD) and t["out.bias"] == (LR, 0.0)
    assert set(table(Norms(), no_decay_bias_norm=False).values()) == {(LR, WD)}


@pytest.mark.parametrize("cls", [TiedLM, FunctionalTiedLM])
def test_tied_embedding_head_is_refused_unless_the_multipliers_are_one(cls):
    t = table(cls())
    assert t["wte.weight"] == (LR, WD) and len(t) == len(dict(cls().named_parameters()))
    for kw in ({"head_lr_mult": 2.0}, {"layer_decay": 0.5}):
        with pytest.raises(GroupsError, match="tied"):
            table(cls(), **kw)


def test_untraceable_model_asks_for_the_head_and_layers_instead_of_guessing():
    with pytest.raises(GroupsError, match="name it, e.g. head: 'b'"):
        table(Untraceable(), head_lr_mult=2.0)
    t = table(Untraceable(), head_lr_mult=2.0, head="b")
    assert t["b.weight"][0] == pytest.approx(LR * 2) and t["a.weight"][0] == pytest.approx(LR)
    with pytest.raises(GroupsError, match="layers: \\['a', 'b'\\]"):
        table(Untraceable(), layer_decay=0.5, head="b")
    t = table(Untraceable(), layer_decay=0.5, layers=["a", "b"])
    assert t["a.weight"][0] == pytest.approx(LR * 0.5) and t["b.weight"][0] == pytest.approx(LR)


def test_a_trial_whose_model_cannot_be_split_stops_the_study_with_a_config_error():
    params = {"optimizer": {"name": "sgd"}, "schedule": {"name": "constant"}, "param_groups": {"head_lr_mult": 2.0}}
    with pytest.raises(ConfigError) as info:
        TrialContext(0, 0).build(params, TiedLM(), steps_per_epoch=2, epochs=1)
    assert info.value.key == "space.param_groups" and "tied" in info.value.message
    params["schedule"] = {"name": "step", "milestones": [0.1], "warmup_epochs": 1.0}
    params["param_groups"] = {}
    with pytest.raises(PointRejected, match="milestone"):  # a sampled point: only this trial fails
        TrialContext(0, 0).build(params, TiedLM(), steps_per_epoch=5, epochs=4)
