"""Training and evaluation modes for schedule-free optimizers (Defazio et al., 2024).

A schedule-free optimizer keeps two points per weight: training takes gradients at ``y``
(the interpolation between the SGD/Adam sequence ``z`` and its average ``x``), evaluation
must use ``x``. ``schedulefree``'s optimizers swap them in place: ``optimizer.train()`` puts
``y`` in the model's parameters, ``optimizer.eval()`` puts ``x``; ``step()`` refuses to run
in eval mode. BatchNorm's running statistics were gathered at the ``y`` points, so after
``optimizer.eval()`` they are recomputed at ``x`` from a few training batches.

Every function here is a no-op for other optimizers (anything without ``train``/``eval``
methods), so trainers call them unconditionally. ``recompute_batchnorm`` needs nothing but
torch: exported code for the schedule-free variants carries a copy.
"""


def is_schedule_free(optimizer) -> bool:
    """Whether ``optimizer`` has schedule-free's ``train()`` / ``eval()`` modes."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def train_mode(optimizer) -> None:
    """Before training steps: a schedule-free optimizer moves the parameters to ``y``."""
    if is_schedule_free(optimizer):
        optimizer.train()


def recompute_batchnorm(model, batches) -> int:
    """Recompute the running mean and variance of ``model``'s BatchNorm layers (those that
    track running statistics) at its current parameters: the statistics are reset and
    averaged over the forward passes of ``batches`` (model inputs; plain average, not
    BatchNorm's momentum), in train mode and without gradients; the model's train/eval mode
    and each layer's momentum are restored. Returns the number of batches used (0 when the
    model has no such layer: then ``batches`` is not read)."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
             and m.running_mean is not None]
    if not norms:
        return 0
    training, momenta = model.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    count = 0
    model.train()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
                count += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(training)
    if count == 0:
        raise ValueError("the model has BatchNorm layers: their statistics must be recomputed at the averaged "
                         "weights from training batches, and none were given")
    return count


def eval_mode(optimizer, model, batches=None) -> int:
    """Before evaluating (or saving): a schedule-free optimizer moves the parameters to ``x``
    and the BatchNorm statistics are recomputed there from ``batches`` (an iterable of model
    inputs, or a function returning one: called only when needed; ``model`` may be a
    compiled wrapper). Returns the number of batches used; 0 and nothing done for other
    optimizers."""
    if not is_schedule_free(optimizer):
        return 0
    optimizer.eval()
    return recompute_batchnorm(model, () if batches is None else _Lazy(batches) if callable(batches) else batches)


class _Lazy:
    """An iterable that calls ``make()`` when first iterated."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())
