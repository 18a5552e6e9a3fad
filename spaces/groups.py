"""Parameter groups: no decay on biases and norm weights, head/body and layer-wise lr.

``param_groups`` needs nothing but torch: the exporter copies its source verbatim into the
exported module, so trials and exported code split a model the same way.
"""


def param_groups(model, lr, weight_decay, no_decay_bias_norm=True, head_lr_mult=1.0, layer_decay=1.0):
    """Split ``model``'s trainable parameters into optimizer param groups.

    - ``no_decay_bias_norm``: parameters with ndim <= 1 (biases, norm scales) get no decay.
    - Layers are the model's top-level children that hold parameters, in order; the last
      one is the head. The head's lr is ``lr * head_lr_mult``; a body layer k places before
      the head gets ``lr * layer_decay ** k`` (ULMFiT/BEiT-style layer-wise decay).
    Groups with equal (lr, weight_decay) are merged; order follows the model. Every group
    carries its own ``weight_decay`` (0 for the no-decay ones), which torch optimizers read
    per group.
    """
    seen = set()  # a parameter shared by two children belongs to the first
    layers = []
    for _, child in model.named_children():
        ps = [p for p in child.parameters() if id(p) not in seen]
        seen.update(id(p) for p in ps)
        if any(p.requires_grad for p in ps):
            layers.append(ps)
    in_children = {id(p) for ps in layers for p in ps}
    loose = [p for p in model.parameters() if id(p) not in in_children]
    if loose:  # parameters registered directly on the model join the first body layer
        layers = [loose + (layers[0] if layers else [])] + layers[1:]
    n = len(layers)
    groups = {}
    for index, params in enumerate(layers):
        depth = n - 1 - index
        mult = head_lr_mult if depth == 0 and n > 1 else layer_decay ** depth
        for p in params:
            if not p.requires_grad:
                continue
            decay = 0.0 if (no_decay_bias_norm and p.ndim <= 1) else weight_decay
            key = (lr * mult, decay)
            groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": glr, "weight_decay": wd} for (glr, wd), ps in groups.items()]
