"""Muon for the hidden weights, AdamW for the rest, as one ``torch.optim.Optimizer``.

The split airbench's and modded-nanogpt's Muon setups use (Jordan et al., 2024):

- **Muon** (``torch.optim.Muon``): every trainable parameter with 2 or more dims that is not
  in the list below: hidden ``Linear`` weights, and conv weights, seen as matrices (dim 0,
  the output channels, by the rest: ``reshape(len(w), -1)``; see ``matrix_order``).
- **AdamW** (``torch.optim.AdamW``): the head's parameters (the module ``head`` names, else
  the last module whose parameters the forward pass uses, found with ``torch.fx`` as for
  ``head_lr_mult``), every parameter of an embedding (``nn.Embedding``, ``nn.EmbeddingBag``)
  or norm module (the types ``no_decay_bias_norm`` knows), every parameter named ``bias``,
  and every parameter with fewer than 2 dims.

``muon_param_groups`` makes the groups: ``groups.param_groups`` gives each parameter its lr
multiplier (``head_lr_mult``, ``layer_decay``) and whether it is decayed
(``no_decay_bias_norm``); each group then gets its side's lr times that multiplier, its
side's weight decay (or 0), and ``use_muon`` (True: Muon; False: AdamW), Muon's groups
first. ``MuonWithAdamW`` is one optimizer over those groups: its ``param_groups`` are the
union (so lr schedulers, ``hold_weight_decay``, ``state_dict``/``load_state_dict``,
``zero_grad`` and step hooks see both), and its ``step`` runs a real ``torch.optim.AdamW``
over the AdamW groups (the same group dicts and state) and a real ``torch.optim.Muon`` over
matrix views of the Muon groups' parameters (their state lives in this optimizer's state).

This module needs nothing but torch: the exporter copies ``muon_param_groups``,
``MuonWithAdamW`` and their helpers into exported code.
"""

import torch

from optsearch.spaces.groups import (
    GroupsError,
    forward_uses,
    no_decay_ids,
    param_groups,
    units,
    unwrap,
    _under,
)


def matrix_order(param):
    """The dims after the first, outermost in memory first: ``param`` seen as a matrix is
    ``param.permute(0, *matrix_order(param)).reshape(len(param), -1)``.

    For a contiguous weight this is ``param.reshape(len(param), -1)`` (airbench's Muon); for
    a channels_last conv weight the columns come in (kh, kw, in) order instead of (in, kh, kw),
    which lets the matrix be a view of the weight. The orthogonalised update does not depend
    on the order of the columns (Newton-Schulz maps ``G P`` to ``NS(G) P`` for a permutation
    ``P``, and the Frobenius norm and the matrix's shape are the same), up to rounding.
    """
    return sorted(range(1, param.ndim), key=lambda d: -param.stride(d))


def as_matrix(param):
    """A 2-D view of ``param`` (rows: dim 0) sharing its storage, so that an in-place update of
    the view updates ``param``; ``ValueError`` when its layout has no such view."""
    try:
        return param.detach().permute(0, *matrix_order(param)).view(param.shape[0], -1)
    except RuntimeError:
        raise ValueError(f"Muon needs a view of the {tuple(param.shape)} parameter as a matrix (dim 0 by the "
                         f"rest), but its strides {param.stride()} allow none; make it contiguous") from None


def adamw_ids(model, head=None):
    """ids of the parameters that AdamW, not Muon, trains (the module docstring's list)."""
    from torch import nn

    model = unwrap(model)
    modules = dict(model.named_modules())
    if head is None:
        try:
            used = forward_uses(model)
        except Exception as err:  # noqa: BLE001 - fx raises many kinds; the message names it
            reason = f"torch.fx cannot trace the model ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
            raise GroupsError(f"param_groups.head: muon trains the head with AdamW, but {reason}, so its head is "
                              f"unknown; name it, e.g. head: {units(model)[-1]!r}") from None
        if not used:
            raise GroupsError("param_groups.head: the model's forward pass uses no parameters")
        head = used[-1]
    elif head not in modules:
        raise GroupsError(f"param_groups.head = {head!r}: no such module; the model's parts: {units(model)}")
    out = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if _under(n, head)}
    out |= no_decay_ids(model)
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            out |= {id(p) for p in module.parameters(recurse=False)}
    return out | {id(p) for p in model.parameters() if p.ndim < 2}


def muon_param_groups(model, lr, weight_decay, adamw_lr, adamw_weight_decay, no_decay_bias_norm=True,
                      head_lr_mult=1.0, layer_decay=1.0, head=None, layers=None):
    """``model``'s trainable parameters as ``MuonWithAdamW``'s param groups.

    A parameter with lr multiplier ``m`` (``head_lr_mult``, ``layer_decay``; see
    ``param_groups``) gets ``lr * m`` and ``weight_decay`` on Muon's side, ``adamw_lr * m``
    and ``adamw_weight_decay`` on AdamW's (decay 0 where ``no_decay_bias_norm`` exempts it).
    Groups with equal (side, lr, weight_decay) are merged; Muon's groups come first, so
    ``param_groups[0]`` is Muon's whenever the model has a hidden weight.
    """
    model = unwrap(model)
    on_adamw = adamw_ids(model, head)
    split = {}
    # lr 1 and weight decay 1: each group's lr is its multiplier, its decay 1 (decayed) or 0
    for group in param_groups(model, 1.0, 1.0, no_decay_bias_norm, head_lr_mult, layer_decay, head, layers):
        mult, decayed = group["lr"], group["weight_decay"] != 0
        for p in group["params"]:
            use_muon = id(p) not in on_adamw
            base_lr, decay = (lr, weight_decay) if use_muon else (adamw_lr, adamw_weight_decay)
            split.setdefault((use_muon, base_lr * mult, decay if decayed else 0.0), []).append(p)
    ordered = sorted(split.items(), key=lambda item: not item[0][0])  # Muon's first; stable otherwise
    return [{"params": ps, "lr": glr, "weight_decay": wd, "use_muon": m} for (m, glr, wd), ps in ordered]


muon_param_groups.__helpers__ = (param_groups, adamw_ids)


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer: ``torch.optim.Muon`` for the groups with ``use_muon=True``,
    ``torch.optim.AdamW`` for those with ``use_muon=False``.

    ``muon`` and ``adamw`` are the two sides' constructor arguments (``lr``, ``momentum``,
    ``nesterov``, ``ns_steps``, ``weight_decay``, ``adjust_lr_fn``; ``lr``, ``betas``,
    ``eps``, ``weight_decay``): each group takes what it does not set itself from its side's.
    Per step, for each parameter with a gradient:

    - AdamW's side: exactly ``torch.optim.AdamW.step`` (the group dicts and the state are
      this optimizer's own).
    - Muon's side: exactly ``torch.optim.Muon.step`` on the parameter seen as a matrix
      ``W`` (``as_matrix``; a 2-D weight as it is): ``B = momentum * B + (1 - momentum) * G``;
      ``U = (1 - momentum) * G + momentum * B`` with ``nesterov``, else ``B``;
      ``O = NS(U)``, ``ns_steps`` quintic Newton-Schulz iterations (coefficients 3.4445,
      -4.7750, 2.0315, in bfloat16, after dividing ``U`` by its Frobenius norm);
      ``W *= 1 - lr * weight_decay``; ``W -= adjust(lr, W.shape) * O``.

    Groups may differ in anything; lr schedulers change each group's ``lr`` in place, and
    the next step uses it on either side.
    """

    __helpers__ = (matrix_order, as_matrix)

    def __init__(self, params, muon=None, adamw=None):
        self.muon_defaults = dict(muon or {})
        self.adamw_defaults = dict(adamw or {})
        self._ready = False
        super().__init__(params, {})
        self._link()

    def add_param_group(self, param_group):
        use_muon = param_group.get("use_muon")
        if not isinstance(use_muon, bool):
            raise ValueError("MuonWithAdamW: every param group needs 'use_muon': True (Muon) or False (AdamW); "
                             "make them with muon_param_groups(model, ...)")
        for key, value in (self.muon_defaults if use_muon else self.adamw_defaults).items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)
        if use_muon:
            for p in param_group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon takes parameters of 2 or more dims, not one of shape {tuple(p.shape)}")
                as_matrix(p)  # raises now, rather than at the first step, when it has no matrix view
        if self._ready:
            self._link()

    def _link(self):
        """(Re)make the two inner optimizers over this optimizer's group dicts and state."""
        adamw = [g for g in self.param_groups if not g["use_muon"]]
        muon = [g for g in self.param_groups if g["use_muon"]]
        self._adamw = None
        if adamw:  # torch.optim.AdamW fills in its other keys and keeps these very dicts
            self._adamw = torch.optim.AdamW(adamw, **self.adamw_defaults)
            self._adamw.state = self.state
        self._muon = None
        if muon:
            inner = [{**g, "params": [as_matrix(p) for p in g["params"]]} for g in muon]
            self._muon = torch.optim.Muon(inner, **self.muon_defaults)
            for group, filled in zip(muon, self._muon.param_groups):
                for key, value in filled.items():  # Muon's other keys (ns_coefficients, eps), for the reader
                    group.setdefault(key, value)
        self._ready = True

    def __getstate__(self):
        return {**super().__getstate__(), "muon_defaults": self.muon_defaults, "adamw_defaults": self.adamw_defaults}

    def __setstate__(self, state):
        super().__setstate__(state)  # also what load_state_dict calls, with new group dicts
        self._ready = False
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._adamw is not None:
            self._adamw.step()
        if self._muon is not None:
            # Muon steps matrix views of the parameters that have a gradient, made anew each
            # step (a parameter's storage may have moved), with the state of the parameters.
            inner, state = [], {}
            for group in self.param_groups:
                if not group["use_muon"]:
                    continue
                views = []
                for p in group["params"]:
                    if p.grad is not None:
                        view = as_matrix(p)
                        view.grad = p.grad.permute(0, *matrix_order(p)).reshape(view.shape)
                        state[view] = self.state[p]
                        views.append(view)
                inner.append({**group, "params": views})
            self._muon.param_groups, self._muon.state = inner, state
            self._muon.step()
            self._muon.param_groups, self._muon.state = [], {}
        return loss
