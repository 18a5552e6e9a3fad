"""CIFAR-10 with an airbench94-class network (Keller Jordan, 2024), data kept on the device.

The network follows github.com/KellerJordan/airbench (airbench94): a frozen 2x2 patch-whitening
convolution with a learnable bias, then three ConvGroups (conv, max-pool, BatchNorm, GELU,
conv, BatchNorm, GELU) with identity-initialised filters and BatchNorms without affine
weights, a global max-pool and a bias-free linear head whose logits are scaled by 1/9.
The optimizer, schedule and param groups come from the trial's params (``ctx.build``), not
from airbench; ``head`` is the last module the forward pass uses, as ``param_groups`` finds it.

Data: the uint8 images are decoded once per worker (``trainers.data``), split by
``split_seed`` into train / validation (``val_size`` images held out of the training set),
and moved to ``ctx.device`` once. Each batch is gathered, randomly translated by up to 2
pixels with reflect padding and randomly flipped, in one indexing op on the device, then
normalised there. No DataLoader and no per-sample Python. On CUDA the forward pass runs
under bf16 autocast, and on CPUs with native bf16 units too (``precision: auto``), else in
float32; channels_last on both unless turned off.

The study optimises ``val_acc`` (every epoch, on the held-out split); ``test_acc`` is
computed once, after the last epoch. With a schedule-free optimizer both are measured at its
averaged weights, with BatchNorm statistics recomputed there (``bn_batches``). ``tta`` averages the logits of each image and its
mirror image for both.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from optsearch.constraints import (
    BOOLEAN,
    TEXT,
    UNIT_LEFT_CLOSED,
    Interval,
    ListOf,
    Nullable,
    Options,
    at_least,
)
from optsearch.spaces.build import BuildContext
from optsearch.spaces.schedule_free import eval_mode, train_mode
from optsearch.trainers.base import TrialContext, option
from optsearch.trainers.data import DEFAULT_ROOT, load_cifar10, split_indices, subset_indices

CIFAR10_TRAIN = 50_000
CIFAR10_TEST = 10_000
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TRANSLATE = 2  # airbench's random translation, pixels, with reflect padding
WHITEN_IMAGES = 5000  # training images used to estimate the whitening filters


@dataclass
class Cifar10Options:
    epochs: int = option(10, at_least(1))
    batch_size: int = option(512, at_least(1))
    root: str = option(DEFAULT_ROOT, TEXT, "image folder, tar archive of one, or torchvision download dir")
    cache_dir: str | None = option(None, Nullable(TEXT), "decoded-data cache when root's folder is not writable")
    val_size: int = option(5000, Interval("int", 1, CIFAR10_TRAIN - 1), "held out of the 50,000 training images")
    train_subset: int | None = option(None, Nullable(at_least(1)), "train on the first N of the rest")
    test_subset: int | None = option(None, Nullable(Interval("int", 1, CIFAR10_TEST)), "test_acc on N test images")
    split_seed: int = option(0, Interval("int"))
    widths: list = option([64, 256, 256], ListOf(at_least(1), length=3, example="[64, 256, 256]"),
                          "the three ConvGroups' widths")
    whiten: bool = option(True, BOOLEAN, "frozen patch-whitening first conv (airbench); false: a trained conv")
    label_smoothing: float = option(0.2, UNIT_LEFT_CLOSED)
    tta: bool = option(True, BOOLEAN, "average logits over horizontal flips for val_acc and test_acc")
    compile: bool = option(False, BOOLEAN, "torch.compile the model (slow first epoch, faster after)")
    channels_last: bool = option(True, BOOLEAN, "NHWC activations: faster on CUDA and on CPU")
    eval_batch_size: int | None = option(None, Nullable(at_least(1)), "null: 2000 on CUDA, 500 on CPU")
    precision: str = option("auto", Options("auto", "bf16", "fp32"),
                            "auto: bf16 autocast on CUDA and on CPUs with native bf16")
    bn_batches: int = option(10, at_least(1), "schedule-free only: training batches whose forward passes "
                             "recompute the BatchNorm statistics at the averaged weights before each evaluation")

    def validate(self):
        if self.train_subset is not None and self.train_subset > CIFAR10_TRAIN - self.val_size:
            yield "train_subset", f"must be <= {CIFAR10_TRAIN} - val_size = {CIFAR10_TRAIN - self.val_size}"

    def train_size(self) -> int:
        return self.train_subset or CIFAR10_TRAIN - self.val_size

    def budget(self) -> BuildContext:
        return BuildContext(math.ceil(self.train_size() / self.batch_size), self.epochs, self.batch_size,
                            self.train_size())

    def eval_sizes(self) -> dict[str, int]:
        """Examples behind each reported accuracy: one of them is the metric's resolution."""
        return {"val_acc": self.val_size, "test_acc": self.test_subset or CIFAR10_TEST}


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: asked for, or ``auto`` on CUDA and on CPUs with native bf16 units
    (AVX512-BF16 or AMX), where it about doubles conv throughput; elsewhere CPU bf16 is
    emulated and slower than float32."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return device.type == "cpu" and any(check() for check in native)


# ---------------------------------------------------------------------------------------
# Network


class BatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: no affine weight (bias only), fast running stats."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias, identity (dirac) initialised where shapes allow."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = Conv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(cout)
        self.conv2 = Conv(cout, cout)
        self.norm2 = BatchNorm(cout)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """whiten -> GELU -> 3 ConvGroups -> MaxPool(3) -> head (last child) * scale."""

    def __init__(self, widths=(64, 256, 256), whiten_kernel: int = 2, scale: float = 1 / 9,
                 num_classes: int = 10):
        super().__init__()
        w1, w2, w3 = widths
        cw = 2 * 3 * whiten_kernel ** 2  # the whitening filters and their negations
        self.whiten = nn.Conv2d(3, cw, kernel_size=whiten_kernel, padding=0, bias=True)
        nn.init.zeros_(self.whiten.bias)
        self.activ = nn.GELU()
        self.block1 = ConvGroup(cw, w1)
        self.block2 = ConvGroup(w1, w2)
        self.block3 = ConvGroup(w2, w3)
        self.pool = nn.MaxPool2d(3)
        self.scale = scale
        self.head = nn.Linear(w3, num_classes, bias=False)  # registered last: the head

    def forward(self, x):
        x = self.activ(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        x = self.pool(x).flatten(1)
        return self.head(x) * self.scale


def whitening_filters(images: torch.Tensor, kernel: int = 2, eps: float = 5e-4) -> torch.Tensor:
    """airbench's patch-whitening init: eigenvectors of the patch covariance, scaled, +/-.

    ``images`` are normalised float ``(n, 3, H, W)``; the covariance is accumulated in chunks
    so the patches (n * 31 * 31 * 12 values) are never all in memory.
    """
    c = images.shape[1]
    d = c * kernel * kernel
    cov = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for chunk in images.split(500):
        p = chunk.float().unfold(2, kernel, 1).unfold(3, kernel, 1)  # n, c, h', w', k, k
        p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, d).double()
        cov += p.T @ p
        count += len(p)
    cov /= count
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
    filters = (eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]).reshape(d, c, kernel, kernel)
    return torch.cat([filters, -filters]).float()


# ---------------------------------------------------------------------------------------
# Device-side batches


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Index reflection without repeating the edge (numpy/torch 'reflect'), for |shift| < n."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def augmented_batch(images: torch.Tensor, idx: torch.Tensor, generator: torch.Generator,
                    translate: int = TRANSLATE, flip: bool = True) -> torch.Tensor:
    """``images[idx]`` randomly translated (reflect padding) and mirrored, in one gather.

    Equivalent to reflect-padding by ``translate``, a random crop back to size and a random
    horizontal flip, per image. Works on uint8 and returns ``(B, C, H, W)`` laid out
    channels_last (the gather produces NHWC).
    """
    b, dev = len(idx), images.device
    h, w = images.shape[-2:]
    shift = torch.randint(-translate, translate + 1, (b, 2), device=dev, generator=generator)
    rows = _reflect(torch.arange(h, device=dev)[None] + shift[:, :1], h)  # (B, H)
    cols = torch.arange(w, device=dev)[None].expand(b, w)
    if flip:  # mirror the crop window: output column j reads padded column w - 1 - j
        mirror = torch.rand(b, 1, device=dev, generator=generator) < 0.5
        cols = torch.where(mirror, w - 1 - cols, cols)
    cols = _reflect(cols + shift[:, 1:], w)  # (B, W)
    out = images[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


class Normalize:
    """uint8 -> normalised float on the device; channels_last when asked."""

    def __init__(self, device: torch.device, channels_last: bool):
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=torch.float32, memory_format=self.memory_format)
        return (x - self.mean) * self.inv_std


def evaluate(model, images, labels, normalize: Normalize, batch_size: int, tta: bool,
             autocast) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    with torch.no_grad(), autocast():
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size])
            logits = model(x).float()
            if tta:
                logits = logits + model(x.flip(-1)).float()
            correct += (logits.argmax(1) == labels[i:i + batch_size]).sum()
    return correct.item() / max(1, len(images))


# ---------------------------------------------------------------------------------------
# Trainer


class Cifar10Trainer:
    Options = Cifar10Options

    def __init__(self, options: Cifar10Options | None = None):
        self.options = options or Cifar10Options()
        self._data = None  # CPU splits, loaded once, reused for every trial of this worker
        self._device_data = None  # (device, splits on it): moved once per device
        self._whiten = None
        self.classes: list[str] = []
        self.source: dict = {}  # where the data came from, once loaded (kind, cache_path, ...)

    def data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"train", "val", "test"}: (uint8 images, int64 labels) on the CPU."""
        if self._data is None:
            o = self.options
            arrays = load_cifar10(o.root, o.cache_dir)
            train_idx, val_idx = split_indices(len(arrays.train_images), o.val_size, o.split_seed,
                                               o.train_subset)
            test_idx = subset_indices(len(arrays.test_images), o.test_subset, o.split_seed)
            self._data = {
                "train": (arrays.train_images[train_idx], arrays.train_labels[train_idx]),
                "val": (arrays.train_images[val_idx], arrays.train_labels[val_idx]),
                "test": (arrays.test_images[test_idx], arrays.test_labels[test_idx]),
            }
            self.classes = arrays.classes
            self.source = {"kind": arrays.source, "cache_path": arrays.cache_path,
                           "from_cache": arrays.from_cache, "decoded_bytes": arrays.nbytes}
        return self._data

    def device_data(self, device: torch.device):
        if self._device_data is None or self._device_data[0] != device:
            self._device_data = None  # release the old copy before making the new one
            moved = {k: (x.to(device), y.to(device)) for k, (x, y) in self.data().items()}
            self._device_data = (device, moved)
        return self._device_data[1]

    def whitening(self) -> torch.Tensor:
        if self._whiten is None:
            x = self.data()["train"][0][:WHITEN_IMAGES]
            norm = Normalize(torch.device("cpu"), channels_last=False)
            self._whiten = whitening_filters(torch.cat([norm(c) for c in x.split(1000)]))
        return self._whiten

    def model(self) -> AirbenchNet:
        net = AirbenchNet(tuple(self.options.widths))
        if self.options.whiten:
            with torch.no_grad():
                net.whiten.weight.copy_(self.whitening())
            net.whiten.weight.requires_grad_(False)
        return net

    def setup(self, params: dict, ctx: TrialContext) -> "Run":
        """Everything one trial needs: model, optimizer and scheduler, data on the device."""
        o = self.options
        device = torch.device(ctx.device)
        data = self.device_data(device)
        torch.manual_seed(ctx.seed)
        model = self.model().to(device)
        if o.channels_last:
            model = model.to(memory_format=torch.channels_last)
        steps = math.ceil(len(data["train"][0]) / o.batch_size)
        optimizer, scheduler = ctx.build(params, model, steps_per_epoch=steps, epochs=o.epochs,
                                         batch_size=o.batch_size, train_size=len(data["train"][0]))
        autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16(o.precision, device)
                    else contextlib.nullcontext)
        return Run(model=model, forward=torch.compile(model) if o.compile else model,
                   optimizer=optimizer, scheduler=scheduler, data=data, steps=steps,
                   normalize=Normalize(device, o.channels_last), autocast=autocast,
                   generator=torch.Generator(device=device).manual_seed(ctx.seed),
                   loss_fn=nn.CrossEntropyLoss(label_smoothing=o.label_smoothing))

    def train_epoch(self, run: "Run", max_steps: int | None = None) -> float:
        """One pass over the shuffled, augmented training split; the mean training loss.

        The scheduler steps after every optimizer step. ``max_steps`` cuts the epoch short
        (benchmarks only). Returns a non-finite value as soon as the loss goes non-finite
        (checked every 16 steps, to keep CUDA from syncing on every step).
        """
        o = self.options
        xt, yt = run.data["train"]
        run.model.train()
        train_mode(run.optimizer)  # schedule-free: the weights where gradients are taken
        perm = torch.randperm(len(xt), device=xt.device, generator=run.generator)
        total = torch.zeros((), device=xt.device)
        seen = 0
        steps = run.steps if max_steps is None else min(run.steps, max_steps)
        for i in range(steps):
            idx = perm[i * o.batch_size:(i + 1) * o.batch_size]
            x = run.normalize(augmented_batch(xt, idx, run.generator))
            with run.autocast():
                logits = run.forward(x)
            loss = run.loss_fn(logits.float(), yt[idx])
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
            if i % 16 == 15 and not torch.isfinite(total):
                break
        return total.item() / max(1, seen)

    def eval_mode(self, run: "Run") -> int:
        """Schedule-free optimizers: put the averaged weights in the model and recompute the
        BatchNorm statistics there, from the first ``bn_batches`` batches of the (shuffled)
        training split, unaugmented, under the training autocast. A no-op otherwise."""
        o = self.options
        xt = run.data["train"][0]

        def batches():
            for i in range(min(o.bn_batches, run.steps)):
                yield run.normalize(xt[i * o.batch_size:(i + 1) * o.batch_size])

        with run.autocast():
            return eval_mode(run.optimizer, run.model, batches)

    def evaluate(self, run: "Run", split: str) -> float:
        """Accuracy on ``"val"`` or ``"test"``, with flip TTA when ``tta`` is on."""
        o = self.options
        batch = o.eval_batch_size or (2000 if run.data[split][0].is_cuda else 500)
        return evaluate(run.forward, *run.data[split], run.normalize, batch, o.tta, run.autocast)

    def fit(self, params: dict, ctx: TrialContext, max_steps_per_epoch: int | None = None) -> dict[str, float]:
        run = self.setup(params, ctx)
        metrics: dict[str, float] = {}
        for epoch in range(self.options.epochs):
            train_loss = self.train_epoch(run, max_steps_per_epoch)
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss is {train_loss} at epoch {epoch + 1}")
            self.eval_mode(run)  # schedule-free: evaluate the averaged weights
            metrics = {"train_loss": train_loss, "val_acc": self.evaluate(run, "val"),
                       "lr": run.optimizer.param_groups[0]["lr"]}
            ctx.report(epoch + 1, metrics)
        metrics["test_acc"] = self.evaluate(run, "test")
        return metrics


@dataclass
class Run:
    """One trial's state (``Cifar10Trainer.setup``)."""

    model: nn.Module
    forward: Callable  # the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data: dict
    steps: int  # optimizer steps per epoch
    normalize: Normalize
    autocast: Callable
    generator: torch.Generator
    loss_fn: nn.Module
