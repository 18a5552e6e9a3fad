"""Parameter groups: no decay on biases and norm parameters, head/body and layer-wise lr.

``param_groups`` needs nothing but torch: the exporter copies its source (and that of the
helpers it lists in ``__helpers__``) verbatim into the exported module, so trials and
exported code split a model the same way.

What each rule means:

- **No decay** (``no_decay_bias_norm``): every parameter of a norm module (torch's
  BatchNorm, SyncBatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm, their lazy forms
  and subclasses, and any module whose class name ends in ``Norm``, such as a hand-written
  RMSNorm) and every parameter named ``bias``. Not a shape rule: ``LayerNorm((4, 8))``'s
  2-D weight gets no decay, a 1-D scale of another module does.
- **The model** is unwrapped first: ``torch.compile``'s ``_orig_mod``, ``DataParallel`` /
  ``DistributedDataParallel``'s ``module``.
- **The head** (``head_lr_mult``): the module named by ``head`` (e.g. ``"fc"``), else the last
  module with parameters in the forward pass (``torch.fx`` traces it; a module used only
  by function, like ``x @ emb.weight.T``, counts where it is used). When the head shares a
  parameter with another layer (tied embeddings), it cannot have an lr of its own: an error.
- **Layers** (``layer_decay``, BEiT/ULMFiT style): the model's parts in forward order, with
  ``Sequential``, ``ModuleList`` and ``ModuleDict`` flattened into their members (so each of a
  transformer's ``blocks`` is a layer) and a wrapper with a single child looked through.
  Parameters registered on the model itself (a ViT's ``cls_token``) join the first layer.
  ``layers`` lists them by hand instead, input to output, as module-name prefixes;
  ``"blocks.*"`` stands for each child of ``blocks``. The head is the last listed layer
  unless ``head`` names it.
- The head's lr is ``lr * head_lr_mult``; the body layer k places before the head has
  ``lr * layer_decay ** k``.

Both multipliers at 1 need no head and no layers: nothing is traced. Otherwise, a model
that ``torch.fx`` cannot trace needs ``head`` (and, with ``layer_decay``, ``layers``) named:
an error says so rather than guessing from the order modules were registered in.
"""


class GroupsError(ValueError):
    """The model cannot be split as asked; the message says what to set."""


def norm_types():
    """torch's norm module classes (isinstance covers their subclasses)."""
    from torch import nn

    names = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d", "LazyBatchNorm2d",
             "LazyBatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LazyInstanceNorm1d",
             "LazyInstanceNorm2d", "LazyInstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm")
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


def unwrap(model):
    """The module that holds the parameters under their own names."""
    from torch import nn

    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def no_decay_ids(model):
    """ids of the parameters that get no weight decay: norm modules' and biases."""
    norms = norm_types()
    out = set()
    for module in model.modules():
        is_norm = isinstance(module, norms) or type(module).__name__.endswith("Norm")
        for name, p in module.named_parameters(recurse=False):
            if is_norm or name == "bias":
                out.add(id(p))
    return out


def units(model):
    """The model's parts, by qualified name, in registration order: containers flattened,
    wrappers with a single child looked through (see the module docstring)."""
    from torch import nn

    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    out = []

    def walk(module, prefix, top):
        children = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
        own = any(True for _ in module.parameters(recurse=False))
        wrapper = not own and len(children) == 1 and not isinstance(module, containers)
        if not top and not wrapper and not isinstance(module, containers):
            out.append(prefix)
            return
        for name, child in children:  # the model's single child counts as the model
            walk(child, f"{prefix}.{name}" if prefix else name, top and wrapper)

    walk(model, "", True)
    return out


def forward_uses(model):
    """Qualified names of the modules whose parameters the forward pass uses, in the order
    of use, by ``torch.fx`` (a module used twice appears twice; ``""`` is the model's own
    parameters); raises whatever fx raises for a model it cannot trace."""
    import torch.fx

    owner = {}  # parameter name -> owning module name
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(prefix=mname, recurse=False):
            owner[pname] = mname
    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):  # torch's layers and their subclasses (a custom Conv2d)
            layers = [c for c in type(m).__mro__ if c.__module__.startswith("torch.nn.") and c is not torch.nn.Module]
            return bool(layers) and not isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict))

    modules = dict(model.named_modules())
    used = []
    for node in Tracer().trace(model).nodes:
        if node.op == "call_module" and any(True for _ in modules[node.target].parameters()):
            used.append(node.target)
        elif node.op == "get_attr" and node.target in owner:
            used.append(owner[node.target])
    return used


def _under(name, prefix):
    """Whether parameter or module ``name`` lies in module ``prefix`` (``""``: the model's own)."""
    return "." not in name if prefix == "" else name == prefix or name.startswith(prefix + ".")


def resolve_layers(model, head=None, layers=None, need_order=True):
    """``(order, head)``: the model's parts in forward order (input first; module-name
    prefixes) and the head's module name. Raises ``GroupsError`` when they cannot be told."""
    modules = dict(model.named_modules())
    if head is not None and head not in modules:
        raise GroupsError(f"param_groups.head = {head!r}: no such module; the model's parts: {units(model)}")
    if layers is not None:
        order = []
        for entry in layers:
            parent = entry[:-2] if entry.endswith(".*") else entry
            if parent not in modules:
                raise GroupsError(f"param_groups.layers: {entry!r}: no module {parent!r} in the model")
            order += [f"{parent}.{n}" for n, _ in modules[parent].named_children()] if parent != entry else [entry]
        return order, head if head is not None else order[-1]
    try:
        used = forward_uses(model)
    except Exception as err:  # noqa: BLE001 - fx raises many kinds; the message names it
        reason = f"torch.fx cannot trace the model ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        if head is None:
            raise GroupsError(f"param_groups.head: {reason}, so its head is unknown; name it, e.g. "
                              f"head: {units(model)[-1]!r}") from None
        if need_order:
            raise GroupsError(f"param_groups.layers: {reason}, so its layer order is unknown; list the layers "
                              f"from input to output, e.g. layers: {units(model)}") from None
        return units(model), head
    if not used:
        raise GroupsError("param_groups.head: the model's forward pass uses no parameters")
    if head is None and used.count(used[-1]) > 1:
        raise GroupsError(f"param_groups: the forward pass ends with {used[-1]!r}, which it also uses earlier "
                          "(tied input and output weights?), so the head cannot have an lr of its own; set "
                          "head_lr_mult and layer_decay to 1, or name the head (param_groups.head)")
    parts = units(model)
    order = []
    for name in used:
        part = next((u for u in parts if _under(name, u)), None)
        if part is not None and part not in order:
            order.append(part)
    return order + [u for u in parts if u not in order], head if head is not None else used[-1]


def param_groups(model, lr, weight_decay, no_decay_bias_norm=True, head_lr_mult=1.0, layer_decay=1.0,
                 head=None, layers=None, lr_free_decay=False):
    """Split ``model``'s trainable parameters into optimizer param groups (rules above).

    Every group carries its own ``lr`` and ``weight_decay`` (0 for the no-decay ones), which
    torch optimizers read per group. ``lr_free_decay``: ``weight_decay`` is a per-step decay
    rate independent of the lr (the AdamW paper's normalized lambda), so each group gets
    ``weight_decay / (its lr)``: torch's decoupled decay ``lr * weight_decay`` is then the
    same rate for every group. Groups with equal (lr, weight_decay) are merged; order
    follows the model's parameters.
    """
    model = unwrap(model)
    every = list(model.named_parameters(remove_duplicate=False))  # a tied parameter under each name
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    mult = {id(p): 1.0 for _, p in named}
    if head_lr_mult != 1 or layer_decay != 1:
        order, head = resolve_layers(model, head, layers, need_order=layer_decay != 1)
        head_ids = {id(p) for n, p in every if _under(n, head)}
        shared = sorted({n for n, p in every if id(p) in head_ids and not _under(n, head)})
        if shared:
            raise GroupsError(f"param_groups: the head {head!r} shares {shared} with another layer (tied "
                              "weights), so it cannot have an lr of its own; set head_lr_mult and layer_decay "
                              "to 1, or name another head (param_groups.head)")
        layer_of = {}
        body = [u for u in order if any(_under(n, u) and id(p) not in head_ids for n, p in every)]
        for index, prefix in enumerate(body):
            for n, p in every:
                if _under(n, prefix) and id(p) not in head_ids:
                    layer_of.setdefault(id(p), index)
        for n, p in named:
            if id(p) in head_ids:
                mult[id(p)] = head_lr_mult
            else:  # parameters in no listed part (the model's own) join the first layer
                mult[id(p)] = layer_decay ** (len(body) - layer_of.get(id(p), 0))
    skip = no_decay_ids(model) if no_decay_bias_norm else set()
    groups = {}
    for _, p in named:
        group_lr = lr * mult[id(p)]
        decay = 0.0 if id(p) in skip else (weight_decay / group_lr if lr_free_decay else weight_decay)
        groups.setdefault((group_lr, decay), []).append(p)
    return [{"params": ps, "lr": glr, "weight_decay": wd} for (glr, wd), ps in groups.items()]


param_groups.__helpers__ = (GroupsError, norm_types, unwrap, no_decay_ids, units, forward_uses, _under,
                            resolve_layers)
