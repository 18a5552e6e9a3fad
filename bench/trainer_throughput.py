"""Training throughput: Cifar10Trainer's hot loop vs a plain ImageFolder + DataLoader loop.

Both sides train the same network (AirbenchNet, same widths, same whitening init), with the
same optimizer, schedule, loss and batch size, on the same training images, in one run:

- trainer: ``Cifar10Trainer.train_epoch``: uint8 images resident on the device, batched
  translate/flip by one gather, normalised per batch, channels_last;
- plain: ``torchvision.datasets.ImageFolder`` over the unpacked JPEGs + ``DataLoader``
  (``num_workers``, shuffle) with RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
  Normalize; the model in the default (NCHW) memory format, as a plain loop has it;
- plain + channels_last: the same loop with the model in channels_last, to separate the
  data path's share of the difference from the memory format's.

Each side runs a few warm-up steps, then one timed epoch over ``--images`` images (the
DataLoader's per-epoch worker start-up counts: that is what every epoch pays). The sides
take turns ``--repeats`` times and the best epoch of each is compared, so that other load
on a shared machine does not favour whichever side ran in a quiet spell.

    python -m bench.trainer_throughput [--images 5000] [--batch-size 512] [--device cpu]
        [--data DIR] [--archive PATH] [--widths 64,256,256] [--workers 2] [--repeats 3]

``--data`` is an unpacked image folder (DIR/train/<class>/*.jpg); without it the archive
is extracted into a temporary folder for the plain loop and removed afterwards.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from optsearch.trainers.base import TrialContext, options_from
from optsearch.trainers.cifar10 import MEAN, STD, Cifar10Options, Cifar10Trainer
from optsearch.trainers.data import split_indices

from bench.common import ARCHIVE, PARAMS, REPO  # noqa: F401


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_trainer(trainer: Cifar10Trainer, ctx: TrialContext, warmup: int) -> tuple[float, int]:
    run = trainer.setup(PARAMS, ctx)
    trainer.train_epoch(run, max_steps=warmup)
    sync(ctx.device)
    t0 = time.perf_counter()
    loss = trainer.train_epoch(run)
    sync(ctx.device)
    assert math.isfinite(loss), loss
    return time.perf_counter() - t0, len(run.data["train"][0])


def bench_plain(trainer: Cifar10Trainer, ctx: TrialContext, folder: Path, indices: torch.Tensor,
                warmup: int, workers: int, channels_last: bool) -> tuple[float, int]:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    o = trainer.options
    device = ctx.device
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    dataset = Subset(datasets.ImageFolder(str(folder / "train"), transform=tf), indices.tolist())
    loader = DataLoader(dataset, batch_size=o.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=False)
    torch.manual_seed(ctx.seed)
    model = trainer.model().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps = math.ceil(len(dataset) / o.batch_size)
    optimizer, scheduler = ctx.build(PARAMS, model, steps_per_epoch=steps, epochs=o.epochs,
                                     batch_size=o.batch_size, train_size=len(dataset))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=o.label_smoothing)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else None

    def epoch(max_steps: int | None) -> int:
        model.train()
        seen = 0
        for i, (x, y) in enumerate(loader):
            if max_steps is not None and i >= max_steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if autocast is not None:
                with autocast():
                    logits = model(x)
            else:
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(y)
        return seen

    epoch(warmup)
    sync(device)
    t0 = time.perf_counter()
    seen = epoch(None)
    sync(device)
    return time.perf_counter() - t0, seen


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000, help="training images per timed epoch")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--data", type=Path, default=None, help="unpacked image folder for the plain loop")
    ap.add_argument("--cache-dir", default=None, help="decoded-data cache (default: the loader's)")
    ap.add_argument("--widths", default="64,256,256")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each timed epoch")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per side, interleaved; best is reported")
    ap.add_argument("--skip-channels-last-baseline", action="store_true")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="the trainer's precision option (auto: bf16 where the CPU has native bf16)")
    args = ap.parse_args(argv)

    if not args.archive.is_file() and args.data is None:
        raise SystemExit(f"no archive at {args.archive} and no --data folder")
    device = torch.device(args.device)
    widths = [int(w) for w in args.widths.split(",")]
    options = options_from(Cifar10Options, {
        "root": str(args.data if args.data is not None else args.archive), "cache_dir": args.cache_dir,
        "train_subset": args.images, "epochs": 1, "batch_size": args.batch_size, "widths": widths,
        "precision": args.precision})
    trainer = Cifar10Trainer(options)
    t0 = time.perf_counter()
    trainer.data()
    load_s = time.perf_counter() - t0
    ctx = TrialContext(0, 0, device)
    train_idx, _ = split_indices(50_000, options.val_size, options.split_seed, options.train_subset)

    tmp = None
    folder = args.data
    extract_s = 0.0
    if folder is None:
        tmp = tempfile.mkdtemp(prefix="cifar10-folder-")
        t0 = time.perf_counter()
        with tarfile.open(args.archive) as tf:
            tf.extractall(tmp, filter="data")
        extract_s = time.perf_counter() - t0
        folder = Path(tmp)
    from optsearch.trainers.cifar10 import use_bf16

    precision = "bf16" if use_bf16(args.precision, device) else "fp32"
    names = [f"Cifar10Trainer (device-resident uint8, channels_last, {precision})",
             f"ImageFolder+DataLoader(num_workers={args.workers}), NCHW",
             f"ImageFolder+DataLoader(num_workers={args.workers}), channels_last"]
    if args.skip_channels_last_baseline:
        names.pop()
    rates: dict[str, list[float]] = {name: [] for name in names}
    images: dict[str, int] = {}
    load_before = os.getloadavg()
    try:
        for _ in range(args.repeats):  # interleaved, so a busy spell on the machine hits every side
            for k, name in enumerate(names):
                if k == 0:
                    s, n = bench_trainer(trainer, ctx, args.warmup)
                else:
                    s, n = bench_plain(trainer, ctx, folder, train_idx, args.warmup, args.workers,
                                       channels_last=(k == 2))
                rates[name].append(n / s)
                images[name] = n
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"device {device}, torch threads {torch.get_num_threads()}, widths {widths}, batch "
          f"{args.batch_size}, {args.images} images, 1 timed epoch after {args.warmup} warm-up steps, "
          f"{args.repeats} interleaved repeats")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"(other processes on the machine slow every side)")
    print(f"data load (decoded cache or decode) {load_s:.2f} s; archive extraction for the plain loop {extract_s:.2f} s")
    print(f"{'loop':58s} {'images':>7s} {'best img/s':>10s} {'median':>8s} {'trainer is':>10s}")
    best = {name: max(r) for name, r in rates.items()}
    for name in names:
        print(f"{name:58s} {images[name]:7d} {best[name]:10.1f} {statistics.median(rates[name]):8.1f} "
              f"{best[names[0]] / best[name]:9.2f}x")


if __name__ == "__main__":
    main()
