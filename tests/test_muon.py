"""muon: torch.optim.Muon for hidden weights and conv filters, AdamW for the rest, one optimizer.

Known answers: the orthogonalised update against a Newton-Schulz iteration written here from
the Muon reference (Jordan et al. 2024; torch's docs), itself checked against the same
polynomial applied to the singular values; Muon's momentum against its formula; the split
of a model's parameters written by hand from its definition.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from optsearch.errors import ConfigError, PointRejected
from optsearch.spaces import BuildContext, Space, build
from optsearch.spaces.muon import MuonWithAdamW, muon_param_groups
from optsearch.spaces.params import resolve
from optsearch.trainers.base import TrialContext

# The quintic's coefficients (Keller Jordan's Muon; torch.optim.Muon's defaults).
QA, QB, QC = 3.4445, -4.7750, 2.0315
BF16_TOL = 0.03  # Muon runs Newton-Schulz in bfloat16: about 2 significant digits


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The Muon reference's NS iteration in float64: X = G / ||G||_F (transposed when tall),
    then ``steps`` times X <- a X + (b A + c A^2) X with A = X X^T."""
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm()
    for _ in range(steps):
        a = x @ x.T
        x = QA * x + (QB * a + QC * a @ a) @ x
    return x.T if tall else x


def newton_schulz_svd(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The same map through the SVD: the quintic acts on each normalised singular value."""
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    s = s / g.double().norm()
    for _ in range(steps):
        s = QA * s + QB * s**3 + QC * s**5
    return u @ torch.diag(s) @ vh


def test_the_reference_iteration_is_the_quintic_on_singular_values():
    torch.manual_seed(0)
    for shape in ((5, 6), (7, 5), (3, 18)):
        g = torch.randn(shape)
        o = newton_schulz(g)
        assert torch.allclose(o, newton_schulz_svd(g), atol=1e-12)
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.6 and s.max() < 1.2  # "US'V^T, S' roughly uniform around 1": not UV^T


class Net(nn.Module):
    """An embedding, a wide and a tall hidden Linear, a norm, a head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.hidden = nn.Linear(6, 5, bias=False)
        self.tall = nn.Linear(5, 7)
        self.norm = nn.LayerNorm(7)
        self.head = nn.Linear(7, 3)

    def forward(self, idx):
        return self.head(self.norm(torch.relu(self.tall(torch.relu(self.hidden(self.emb(idx)))))))


LR, WD, ALR, AWD = 0.05, 0.1, 3e-3, 0.02


def side_table(model, **kw) -> dict[str, tuple[bool, float, float]]:
    groups = muon_param_groups(model, LR, WD, ALR, AWD, **kw)
    by_id = {id(p): (g["use_muon"], g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = dict(getattr(model, "_orig_mod", model).named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(by_id) == len(names)  # each parameter once
    assert [g["use_muon"] for g in groups] == sorted((g["use_muon"] for g in groups), reverse=True)  # Muon first
    return {n: by_id[id(p)] for n, p in names.items()}


def test_the_split_hidden_weights_to_muon_the_rest_to_adamw():
    # From Net's definition: forward order emb, hidden, tall, norm, head.
    m = Net()
    assert side_table(m) == {
        "emb.weight": (False, ALR, AWD),  # an embedding
        "hidden.weight": (True, LR, WD), "tall.weight": (True, LR, WD),
        "tall.bias": (False, ALR, 0.0), "norm.weight": (False, ALR, 0.0), "norm.bias": (False, ALR, 0.0),
        "head.weight": (False, ALR, AWD), "head.bias": (False, ALR, 0.0),  # the head
    }
    # head_lr_mult and layer_decay multiply both sides' lrs; no_decay_bias_norm: false decays all
    got = side_table(m, head_lr_mult=2.0, layer_decay=0.5, no_decay_bias_norm=False)
    want = {
        "emb.weight": (False, ALR * 0.5**4, AWD), "hidden.weight": (True, LR * 0.5**3, WD),
        "tall.weight": (True, LR * 0.25, WD), "tall.bias": (False, ALR * 0.25, AWD),
        "norm.weight": (False, ALR * 0.5, AWD), "norm.bias": (False, ALR * 0.5, AWD),
        "head.weight": (False, ALR * 2, AWD), "head.bias": (False, ALR * 2, AWD),
    }
    assert got == {k: (s, pytest.approx(lr, rel=1e-12), wd) for k, (s, lr, wd) in want.items()}
    # compiled: the same split on the unwrapped model; a named head
    assert side_table(torch.compile(m)) == side_table(m)
    named = side_table(m, head="tall")
    assert named["tall.weight"] == (False, ALR, AWD) and named["head.weight"] == (True, LR, WD)


def test_conv_filters_go_to_muon_biases_and_batchnorm_to_adamw():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, bias=False),
                      nn.Flatten(), nn.Linear(4, 2))
    assert side_table(m) == {
        "0.weight": (True, LR, WD), "0.bias": (False, ALR, 0.0), "1.weight": (False, ALR, 0.0),
        "1.bias": (False, ALR, 0.0), "3.weight": (True, LR, WD), "5.weight": (False, ALR, AWD),
        "5.bias": (False, ALR, 0.0),
    }


def muon_params(**kw) -> dict:
    return {"optimizer": {"name": "muon", "lr": LR, "weight_decay": WD, "adamw_lr": ALR, "adamw_weight_decay": AWD,
                          **kw}, "schedule": {"name": "constant"}}


def test_one_step_is_the_orthogonalised_gradient():
    torch.manual_seed(0)
    m = Net()
    opt, _ = build(muon_params(momentum=0.9, nesterov=True), m, BuildContext(10, 1))
    assert type(opt) is MuonWithAdamW and type(opt._muon) is torch.optim.Muon and type(opt._adamw) is torch.optim.AdamW
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in m.named_parameters()}
    for n, p in m.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    for name in ("hidden.weight", "tall.weight"):
        rows, cols = w0[name].shape
        # B = 0.9 * 0 + 0.1 g; nesterov: U = 0.1 g + 0.9 B; NS ignores the scale
        want = w0[name].double() * (1 - LR * WD) - LR * math.sqrt(max(1, rows / cols)) * newton_schulz(grads[name])
        got = dict(m.named_parameters())[name].detach().double()
        assert torch.allclose(got, want, atol=LR * BF16_TOL, rtol=0), name
        raw = w0[name].double() * (1 - LR * WD) - LR * grads[name].double() / grads[name].double().norm()
        assert not torch.allclose(got, raw, atol=LR * 0.1, rtol=0)  # it is not the plain normalised gradient
        assert torch.allclose(opt.state[dict(m.named_parameters())[name]]["momentum_buffer"], 0.1 * grads[name])


def test_momentum_nesterov_and_adjust_lr_over_steps():
    torch.manual_seed(1)
    mu = 0.8
    for nesterov in (True, False):
        for fn, scale in (("original", lambda a, b: math.sqrt(max(1, a / b))),
                          ("match_rms_adamw", lambda a, b: 0.2 * math.sqrt(max(a, b))),
                          ("spectral_unclamped", lambda a, b: math.sqrt(a / b))):
            m = Net()
            opt, _ = build(muon_params(momentum=mu, nesterov=nesterov, weight_decay=0.0, adjust_lr_fn=fn), m,
                           BuildContext(10, 1))
            w = m.tall.weight  # 7 x 5
            buf = torch.zeros_like(w, dtype=torch.float64)
            for _ in range(3):
                g = torch.randn_like(w)
                before = w.detach().double().clone()
                for p in m.parameters():
                    p.grad = torch.zeros_like(p)
                w.grad = g.clone()
                opt.step()
                buf = mu * buf + (1 - mu) * g.double()
                u = (1 - mu) * g.double() + mu * buf if nesterov else buf
                want = before - LR * scale(7, 5) * newton_schulz(u)
                assert torch.allclose(w.detach().double(), want, atol=LR * scale(7, 5) * BF16_TOL, rtol=0), (fn, nesterov)
                assert torch.allclose(opt.state[w]["momentum_buffer"].double(), buf, atol=1e-6)


def test_a_conv_filter_is_stepped_as_its_reshaped_matrix_channels_last_too():
    torch.manual_seed(2)
    g = torch.randn(4, 3, 3, 3)
    w0 = torch.randn(4, 3, 3, 3)
    reference = nn.Parameter(w0.reshape(4, -1).clone())  # torch.optim.Muon on the matrix itself
    reference.grad = g.reshape(4, -1).clone()
    torch.optim.Muon([reference], lr=LR, weight_decay=WD, momentum=0.95, nesterov=True).step()
    for layout in (torch.contiguous_format, torch.channels_last):
        conv = nn.Conv2d(3, 4, 3, bias=False)
        m = nn.Sequential(conv, nn.Flatten(), nn.Linear(4, 2)).to(memory_format=layout)
        with torch.no_grad():
            conv.weight.copy_(w0)
        opt, _ = build(muon_params(momentum=0.95), m, BuildContext(10, 1))
        conv.weight.grad = g.clone().contiguous(memory_format=layout)
        opt.step()
        assert conv.weight.is_contiguous(memory_format=layout)  # updated in place, layout kept
        if layout == torch.contiguous_format:
            assert torch.equal(conv.weight.reshape(4, -1), reference)  # exactly torch's Muon
        else:  # columns in (kh, kw, in) order: the same update up to bfloat16 rounding
            assert torch.allclose(conv.weight.reshape(4, -1), reference, atol=LR * BF16_TOL, rtol=0)
        want = w0.reshape(4, -1).double() * (1 - LR * WD) - LR * newton_schulz(g.reshape(4, -1))
        assert torch.allclose(conv.weight.reshape(4, -1).double(), want, atol=LR * BF16_TOL, rtol=0)


def test_both_sides_are_exactly_torchs_own_optimizers_with_schedules_and_resume():
    torch.manual_seed(3)
    idx = torch.randint(0, 10, (16,))
    target = torch.randint(0, 3, (16,))
    p = {**muon_params(momentum=0.9), "schedule": {"name": "cosine", "warmup_epochs": 1}}
    ctx = BuildContext(4, 3)

    def run(model, opt, sched, steps):
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(idx), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    m = Net()
    m2 = copy.deepcopy(m)
    opt, sched = build(p, m, ctx)
    # the same groups stepped by torch's own classes, side by side
    groups = muon_param_groups(m2, LR, WD, ALR, AWD)
    muon = torch.optim.Muon([g for g in groups if g["use_muon"]], momentum=0.9, nesterov=True, ns_steps=5,
                            adjust_lr_fn="original")
    adamw = torch.optim.AdamW([g for g in groups if not g["use_muon"]], betas=(0.9, 0.95), eps=1e-8)
    lrs = []
    for k in range(12):
        factor = opt.param_groups[0]["lr"] / LR  # the schedule's, applied by hand to torch's pair
        for o in (muon, adamw):
            for g in o.param_groups:
                g["lr"] = (LR if g["use_muon"] else ALR) * factor
        for model, optimizers in ((m, [opt]), (m2, [muon, adamw])):
            loss = nn.functional.cross_entropy(model(idx), target)
            for o in optimizers:
                o.zero_grad()
            loss.backward()
            for o in optimizers:
                o.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        sched.step()
    for (n, a), b in zip(m.named_parameters(), m2.parameters()):
        assert torch.equal(a, b), n
    assert lrs[0][0] / LR == pytest.approx(lrs[0][-1] / ALR) and len({row[0] for row in lrs}) > 3  # both scheduled

    # state_dict: stop after 5 steps, rebuild, load, continue: the same as running on
    m, resumed = Net(), Net()
    opt, sched = build(p, m, ctx)
    run(m, opt, sched, 5)
    saved_model, saved_opt, saved_sched = (copy.deepcopy(x.state_dict()) for x in (m, opt, sched))
    run(m, opt, sched, 5)
    resumed.load_state_dict(saved_model)
    opt2, sched2 = build(p, resumed, ctx)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert any(isinstance(v, torch.Tensor) for s in opt2.state.values() for v in s.values())
    run(resumed, opt2, sched2, 5)
    for (n, a), b in zip(m.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    assert copy.deepcopy(opt2).param_groups[0]["lr"] == opt2.param_groups[0]["lr"]  # picklable, relinked


def test_weight_decay_on_both_sides_and_held_decay():
    m = Net()
    p = {**muon_params(wd_schedule="constant"), "schedule": {"name": "cosine"}}
    opt, sched = build(p, m, BuildContext(5, 2))
    w0 = {n: q.detach().clone() for n, q in m.named_parameters()}
    for _ in range(4):
        for q in m.parameters():
            q.grad = torch.zeros_like(q)
        opt.step()
        sched.step()
    # zero gradients: Muon's update is NS(0) = 0 and Adam's is 0; only the held decay moves weights
    assert torch.allclose(m.hidden.weight, w0["hidden.weight"] * (1 - LR * WD) ** 4, rtol=1e-6)
    assert torch.allclose(m.head.weight, w0["head.weight"] * (1 - ALR * AWD) ** 4, rtol=1e-6)
    assert torch.equal(m.head.bias, w0["head.bias"]) and torch.equal(m.norm.weight, w0["norm.weight"])


def test_muon_configs_and_params_are_checked():
    with pytest.raises(ConfigError) as info:
        Space.from_config({"optimizer": "muon", "schedule": {"onecycle": {"cycle_momentum": True}}})
    assert info.value.key == "space.schedule.onecycle.cycle_momentum" and "muon" in str(info.value)
    Space.from_config({"optimizer": "muon", "schedule": {"onecycle": {"cycle_momentum": False}}})
    with pytest.raises(ConfigError) as info:
        resolve({"optimizer": {"name": "muon"}, "schedule": {"name": "onecycle"}})
    assert info.value.key == "params.schedule.cycle_momentum"
    for knob, bad in (("ns_steps", 0), ("ns_steps", 100), ("adjust_lr_fn", "none"), ("momentum", 1.0),
                      ("adamw_lr", 0.0), ("weight_decay_norm", 0.1)):
        with pytest.raises(ConfigError) as info:
            Space.from_config({"optimizer": {"muon": {knob: bad}}})
        assert info.value.key == f"space.optimizer.muon.{knob}"


def test_a_model_fx_cannot_trace_must_name_its_head():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = self.body(x)
            return self.out(x)

    with pytest.raises(ConfigError, match="name it, e.g. head: 'out'"):
        TrialContext(0, 0).build(muon_params(), Untraceable(), steps_per_epoch=2, epochs=1)
    opt, _ = TrialContext(0, 0).build({**muon_params(), "param_groups": {"head": "out"}}, Untraceable(),
                                      steps_per_epoch=2, epochs=1)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False, False]  # body; out.weight; biases
    with pytest.raises(PointRejected):  # a bad stored point fails its trial only
        TrialContext(0, 0).build({"optimizer": {"name": "muon", "ns_steps": -1}, "schedule": {"name": "constant"}},
                                 Net(), steps_per_epoch=2, epochs=1)


def test_a_group_without_a_side_or_a_vector_on_muons_is_refused():
    with pytest.raises(ValueError, match="use_muon"):
        MuonWithAdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="2 or more dims"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": True}])
