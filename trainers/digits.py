"""scikit-learn's digits (1,797 8x8 images): a small MLP, seconds per trial on a CPU.

Splits are fixed by ``split_seed``: 20% test, then ``val_fraction`` of the rest for
validation. The study optimises ``val_acc``; ``test_acc`` is only reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from optsearch.constraints import UNIT_OPEN, Interval, at_least
from optsearch.spaces.build import BuildContext
from optsearch.trainers.base import TrialContext, option


DIGITS_SIZE = 1797  # scikit-learn's digits


def split_sizes(n: int, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes: 20% test, then ``val_fraction`` of the rest for validation."""
    n_test = n // 5
    n_val = int((n - n_test) * val_fraction)
    return n - n_test - n_val, n_val, n_test


@dataclass
class DigitsOptions:
    epochs: int = option(20, at_least(1))
    batch_size: int = option(64, at_least(1))
    hidden: int = option(128, at_least(1), "width of the two hidden layers")
    val_fraction: float = option(0.2, UNIT_OPEN, "share of the non-test images held out for val_acc")
    split_seed: int = option(0, Interval("int"))

    def budget(self) -> BuildContext:
        train = split_sizes(DIGITS_SIZE, self.val_fraction)[0]
        return BuildContext(-(-train // self.batch_size), self.epochs, self.batch_size, train)

    def eval_sizes(self) -> dict[str, int]:
        """Examples behind each reported accuracy: one of them is the metric's resolution."""
        _, val, test = split_sizes(DIGITS_SIZE, self.val_fraction)
        return {"val_acc": val, "test_acc": test}


def load_digits_tensors(split_seed: int, val_fraction: float):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    x, y = x[perm], y[perm]
    n_train, n_val, n_test = split_sizes(len(x), val_fraction)
    test = (x[:n_test], y[:n_test])
    val = (x[n_test:n_test + n_val], y[n_test:n_test + n_val])
    train = (x[n_test + n_val:], y[n_test + n_val:])
    return train, val, test


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class DigitsTrainer:
    Options = DigitsOptions

    def __init__(self, options: DigitsOptions | None = None):
        self.options = options or DigitsOptions()
        self._data = None  # loaded once, reused for every trial of this worker

    def data(self):
        if self._data is None:
            self._data = load_digits_tensors(self.options.split_seed, self.options.val_fraction)
        return self._data

    def model(self) -> nn.Module:
        h = self.options.hidden
        return nn.Sequential(
            nn.Sequential(nn.Linear(64, h), nn.LayerNorm(h), nn.ReLU()),
            nn.Sequential(nn.Linear(h, h), nn.ReLU()),
            nn.Linear(h, 10),
        )

    def fit(self, params: dict, ctx: TrialContext) -> dict[str, float]:
        o = self.options
        (xt, yt), (xv, yv), (xs, ys) = (tuple(t.to(ctx.device) for t in s) for s in self.data())
        torch.manual_seed(ctx.seed)
        model = self.model().to(ctx.device)
        steps = -(-len(xt) // o.batch_size)
        optimizer, scheduler = ctx.build(params, model, steps_per_epoch=steps, epochs=o.epochs,
                                         batch_size=o.batch_size, train_size=len(xt))
        gen = torch.Generator().manual_seed(ctx.seed)
        loss_fn = nn.CrossEntropyLoss()
        metrics: dict[str, float] = {}
        for epoch in range(o.epochs):
            model.train()
            ctx.train_mode(optimizer)  # schedule-free: the weights where gradients are taken
            perm = torch.randperm(len(xt), generator=gen).to(ctx.device)
            total = 0.0
            for i in range(steps):
                idx = perm[i * o.batch_size:(i + 1) * o.batch_size]
                loss = loss_fn(model(xt[idx]), yt[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
            train_loss = total / len(xt)
            if not torch.isfinite(torch.tensor(train_loss)):
                raise FloatingPointError(f"training loss is {train_loss} at epoch {epoch + 1}")
            # schedule-free: evaluate the averaged weights (BatchNorm statistics, if the model
            # had any, recomputed there from training batches)
            ctx.eval_mode(optimizer, model, lambda: xt.split(o.batch_size))
            metrics = {"train_loss": train_loss, "val_acc": accuracy(model, xv, yv),
                       "lr": optimizer.param_groups[0]["lr"]}
            ctx.report(epoch + 1, metrics)
        metrics["test_acc"] = accuracy(model, xs, ys)
        return metrics
