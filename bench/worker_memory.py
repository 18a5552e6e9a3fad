"""Peak memory of one worker process running the CIFAR-10 trainer: one epoch, full training set.

Loads the data as a worker does (the decoded cache when there is one), trains one epoch on
all 45,000 training images (50,000 minus the validation split) at the configured batch size,
then evaluates validation and test as ``fit`` does. On a CPU a full epoch takes minutes;
``--max-steps`` stops the epoch early: the peak is reached within the first steps (the data
is resident from the start and every step allocates the same).

Peak RSS comes from ``resource.getrusage`` (``ru_maxrss``, monotonic), current RSS from
``/proc/self/status`` (or psutil when installed), after each phase.

    python -m bench.worker_memory [--max-steps 20] [--batch-size 512] [--device cpu]
        [--archive PATH] [--cache-dir DIR] [--fresh]

``--fresh`` decodes into an empty temporary cache, to include the one-time decode's peak.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ARCHIVE, PARAMS, REPO  # noqa: F401
MB = 1e6


def peak_rss() -> float:
    """Peak resident set size of this process so far, bytes (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return float("nan")


def status_kb(field: str) -> float:
    """A field of /proc/self/status in bytes: RssAnon is private memory; RssFile is mapped
    files (torch's shared libraries), shared by every worker on the machine."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return float("nan")


def snapshot() -> tuple[float, float, float, float]:
    return current_rss(), peak_rss(), status_kb("RssAnon"), status_kb("RssFile")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=None, help="stop the epoch after this many steps")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--eval-batch-size", type=int, default=None, help="default: the trainer's (500 on CPU)")
    ap.add_argument("--widths", default="64,256,256")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--fresh", action="store_true", help="decode into an empty temporary cache")
    ap.add_argument("--malloc", choices=["default", "return"], default="default",
                    help="return: glibc malloc as workers.return_freed_memory: true sets it in a trainer process")
    ap.add_argument("--compare", type=int, default=0, metavar="N",
                    help="run N interleaved pairs (--malloc default, return) in fresh processes; a table")
    args = ap.parse_args(argv)
    if not args.archive.is_file():
        raise SystemExit(f"no archive at {args.archive}")
    if args.compare:
        return compare(args, argv)
    if args.malloc == "return":
        from optsearch.search.workers import return_freed_memory

        if not return_freed_memory():
            print("note: malloc left as it was (not glibc, or MALLOC_* set in the environment)")

    phases = [("python start", snapshot())]
    import torch

    from optsearch.trainers.base import TrialContext, options_from
    from optsearch.trainers.cifar10 import Cifar10Options, Cifar10Trainer

    phases.append(("imports (torch, optsearch)", snapshot()))
    tmp = tempfile.TemporaryDirectory(prefix="cifar10-cache-") if args.fresh else None
    cache_dir = tmp.name if tmp else args.cache_dir
    options = options_from(Cifar10Options, {
        "root": str(args.archive), "cache_dir": cache_dir, "epochs": 1, "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size, "widths": [int(w) for w in args.widths.split(",")]})
    trainer = Cifar10Trainer(options)
    t0 = time.perf_counter()
    data = trainer.data()
    load_s = time.perf_counter() - t0
    phases.append((f"data loaded ({'cache' if trainer.source['from_cache'] else 'decoded'}, {load_s:.1f} s)",
                   snapshot()))

    device = torch.device(args.device)
    t0 = time.perf_counter()
    result = trainer.fit(PARAMS, TrialContext(0, 0, device), max_steps_per_epoch=args.max_steps)
    fit_s = time.perf_counter() - t0
    steps = -(-len(data["train"][0]) // args.batch_size)
    done = steps if args.max_steps is None else min(steps, args.max_steps)
    phases.append((f"fit: {done}/{steps} steps + val/test eval ({fit_s:.1f} s)", snapshot()))
    if tmp is not None:
        tmp.cleanup()

    split_bytes = {k: x.numel() * x.element_size() + y.numel() * y.element_size() for k, (x, y) in data.items()}
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, eval batch "
          f"{args.eval_batch_size}, widths {options.widths}, pid {os.getpid()}")
    print(f"decoded uint8 CIFAR-10 (50,000 + 10,000 images, labels): {trainer.source['decoded_bytes'] / MB:.1f} MB; "
          f"resident splits: " + ", ".join(f"{k} {len(data[k][0])} = {b / MB:.1f} MB" for k, b in split_bytes.items())
          + f" (total {sum(split_bytes.values()) / MB:.1f} MB)")
    print(f"{'after':58s} {'RSS MB':>8s} {'peak MB':>8s} {'anon MB':>8s} {'files MB':>8s}")
    for name, (rss, peak, anon, files) in phases:
        print(f"{name:58s} {rss / MB:8.0f} {peak / MB:8.0f} {anon / MB:8.0f} {files / MB:8.0f}")
    print(f"metrics (short run, not accuracy figures): {result}")
    print(f"RESULT peak_mb={phases[-1][1][1] / MB:.0f} fit_s={fit_s:.2f} steps={done}")


def compare(args, argv) -> None:
    """Interleaved fresh processes with glibc's default malloc and with freed memory returned:
    peak RSS and the time of the same training steps, side by side."""
    import re
    import subprocess
    import statistics

    argv = list(sys.argv[1:] if argv is None else argv)
    i = argv.index("--compare")
    rest = argv[:i] + argv[i + 2:]
    rows: dict[str, list[tuple[float, float]]] = {"default": [], "return": []}
    for _ in range(args.compare):
        for mode in rows:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            out = subprocess.run([sys.executable, "-m", "bench.worker_memory", *rest, "--malloc", mode],
                                 capture_output=True, text=True, env=env, check=True).stdout
            m = re.search(r"RESULT peak_mb=(\d+) fit_s=([\d.]+)", out)
            rows[mode].append((float(m.group(1)), float(m.group(2))))
            print(f"  {mode}: peak {m.group(1)} MB, fit {m.group(2)} s", flush=True)
    print(f"batch {args.batch_size}, {args.max_steps or 'all'} steps + val/test evaluation, {args.compare} pair(s)")
    print("| malloc | peak RSS MB (each run) | peak median | fit s (each run) | fit median | time vs default |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    base = statistics.median(t for _, t in rows["default"])
    for mode, rs in rows.items():
        fit = statistics.median(t for _, t in rs)
        print(f"| {mode} | {', '.join(f'{p:.0f}' for p, _ in rs)} | {statistics.median(p for p, _ in rs):.0f} "
              f"| {', '.join(f'{t:.1f}' for _, t in rs)} | {fit:.1f} | {fit / base:.2f}x |")


if __name__ == "__main__":
    main()
