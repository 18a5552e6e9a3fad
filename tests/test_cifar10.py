"""CIFAR-10 loading, caching, splits and a real short CPU training run.

Reads ``../shared/datasets/cifar10-jpeg.tar.xz`` (relative to the repository root) and skips
when it is absent. The 60,000 JPEGs are decoded at most once per session (the ``cifar``
fixture); everything else reads the decoded cache that load wrote.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optsearch.errors import ConfigError
from optsearch.trainers.base import TrialContext, options_from
from optsearch.trainers.cifar10 import AirbenchNet, Cifar10Options, Cifar10Trainer, augmented_batch
from optsearch.trainers.data import load_cifar10, split_indices, subset_indices

from tests.conftest import CIFAR_ARCHIVE as ARCHIVE

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

PARAMS = {
    "optimizer": {"name": "adamw", "lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                  "weight_decay": 5e-2, "weight_decay_norm": None},
    "schedule": {"name": "cosine", "warmup_epochs": 0, "warmup_start_factor": 0.01, "eta_min": 0.0},
    "param_groups": {"no_decay_bias_norm": True, "head_lr_mult": 1.0, "layer_decay": 1.0},
}

needs_archive = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"CIFAR-10 archive not found at {ARCHIVE}")


@pytest.fixture(scope="session")
def cache_dir(cifar_cache_dir) -> Path:
    return cifar_cache_dir


def small_trainer(cache_dir: Path, **options) -> Cifar10Trainer:
    base = {"root": str(ARCHIVE), "cache_dir": str(cache_dir), "val_size": 1000, "test_subset": 1000,
            "widths": [32, 64, 64], "batch_size": 128}
    return Cifar10Trainer(options_from(Cifar10Options, {**base, **options}))


class Recorder:
    def __init__(self):
        self.calls: list[tuple[int, dict]] = []

    def __call__(self, step: int, metrics: dict) -> bool:
        self.calls.append((step, dict(metrics)))
        return False


# ---------------------------------------------------------------------------------------
# Data


@needs_archive
def test_shapes_dtypes_and_classes(cifar):
    arrays, _ = cifar
    assert arrays.source == "archive"
    assert arrays.classes == CLASSES
    assert arrays.train_images.shape == (50_000, 3, 32, 32)
    assert arrays.test_images.shape == (10_000, 3, 32, 32)
    assert arrays.train_images.dtype == arrays.test_images.dtype == torch.uint8
    assert arrays.train_labels.dtype == arrays.test_labels.dtype == torch.int64
    assert arrays.train_labels.bincount().tolist() == [5000] * 10
    assert arrays.test_labels.bincount().tolist() == [1000] * 10
    # ImageFolder order: sorted classes, then sorted file names; real pixels, not blank
    assert arrays.train_labels[:5000].eq(0).all() and arrays.train_labels[-5000:].eq(9).all()
    assert 80 < arrays.train_images[:1000].float().mean() < 180
    assert arrays.nbytes == 60_000 * 3 * 32 * 32 + 60_000 * 8


@needs_archive
def test_cache_written_and_second_load_skips_decoding(cifar, cache_dir):
    first, first_s = cifar
    assert first.cache_path is not None and first.cache_path.is_file()
    start = time.perf_counter()
    second = load_cifar10(ARCHIVE, cache_dir=cache_dir)
    second_s = time.perf_counter() - start
    assert second.from_cache and second.cache_path == first.cache_path
    if not first.from_cache:  # the session's first load decoded: the cached one must be far faster
        assert first.cache_path.parent == cache_dir
        assert second_s < first_s / 3, (first_s, second_s)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert second.classes == first.classes
    assert not list(first.cache_path.parent.glob("*.tmp"))  # the atomic write left nothing behind


@needs_archive
def test_image_folder_source_and_cache_placement(cifar, tmp_path, monkeypatch):
    """A folder of lossless PNGs of real CIFAR images decodes back to the same pixels."""
    arrays, _ = cifar
    monkeypatch.setenv("OPTSEARCH_CACHE", str(tmp_path / "cache"))  # the default cache: cifar10/ in it
    from PIL import Image

    folder = tmp_path / "pngs"
    picks = {}
    for split, images, labels in (("train", arrays.train_images, arrays.train_labels),
                                  ("test", arrays.test_images, arrays.test_labels)):
        idx = torch.cat([(labels == c).nonzero()[:2, 0] for c in range(10)])
        picks[split] = (images[idx], labels[idx])
        for n, i in enumerate(idx.tolist()):
            d = folder / split / CLASSES[labels[i]]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(d / f"{n:04d}.png")

    loaded = load_cifar10(folder)
    assert loaded.source == "folder" and not loaded.from_cache
    assert loaded.classes == CLASSES
    assert loaded.cache_path.parent == folder  # beside the data: the folder is writable
    for split in ("train", "test"):
        assert torch.equal(getattr(loaded, f"{split}_images"), picks[split][0])
        assert torch.equal(getattr(loaded, f"{split}_labels"), picks[split][1])
    assert load_cifar10(folder).from_cache

    readonly = tmp_path / "readonly"
    shutil.copytree(folder / "train", readonly / "train")
    shutil.copytree(folder / "test", readonly / "test")
    readonly.chmod(0o555)
    try:
        again = load_cifar10(readonly)
        assert again.cache_path.parent == tmp_path / "cache" / "cifar10"  # read-only: the fallback
        assert torch.equal(again.test_images, picks["test"][0])
        explicit = tmp_path / "explicit"
        assert load_cifar10(readonly, cache_dir=explicit).from_cache  # found in the default
    finally:
        readonly.chmod(0o755)


def test_bad_roots_are_config_errors(tmp_path):
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(ConfigError, match="trainer.root"):
        load_cifar10(not_archive)
    broken = tmp_path / "broken.tar.xz"
    broken.write_bytes(b"not an xz stream")
    with pytest.raises(ConfigError, match="cannot read archive"):
        load_cifar10(broken, cache_dir=tmp_path)


def test_split_disjoint_deterministic_and_nested():
    train, val = split_indices(50_000, 5000, split_seed=0)
    assert len(train) == 45_000 and len(val) == 5000
    assert len(set(train.tolist()) | set(val.tolist())) == 50_000  # disjoint and complete
    again_train, again_val = split_indices(50_000, 5000, split_seed=0)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    _, other_val = split_indices(50_000, 5000, split_seed=1)
    assert not torch.equal(val, other_val)
    sub, sub_val = split_indices(50_000, 5000, split_seed=0, train_subset=2000)
    assert torch.equal(sub, train[:2000]) and torch.equal(sub_val, val)  # same val, nested train
    assert len(subset_indices(10_000, 500, 0).unique()) == 500
    assert torch.equal(subset_indices(10_000, None, 0), torch.arange(10_000))
    with pytest.raises(ConfigError, match="train_subset"):
        split_indices(50_000, 5000, 0, train_subset=45_001)
    with pytest.raises(ConfigError, match="val_size"):
        split_indices(50_000, 50_000, 0)


@needs_archive
def test_split_is_class_balanced_on_real_labels(cifar):
    arrays, _ = cifar
    _, val = split_indices(50_000, 5000, split_seed=0)
    counts = arrays.train_labels[val].bincount(minlength=10)
    assert counts.min() > 400 and counts.max() < 600


# ---------------------------------------------------------------------------------------
# Options, model, augmentation


@pytest.mark.parametrize("options, key", [
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 1.5}, "batch_size"),
    ({"train_subset": 0}, "train_subset"),
    ({"val_size": 45_000, "train_subset": 5001}, "train_subset"),
    ({"val_size": 0}, "val_size"),
    ({"test_subset": 10_001}, "test_subset"),
    ({"widths": [64, 256]}, "widths"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"tta": "yes"}, "tta"),
    ({"eval_batch_size": 0}, "eval_batch_size"),
    ({"precision": "fp16"}, "precision"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_bad_options_are_one_line_config_errors(options, key):
    with pytest.raises(ConfigError) as err:
        options_from(Cifar10Options, options)
    assert err.value.key == f"trainer.{key}"
    assert "\n" not in str(err.value)


def test_defaults_validate():
    options = options_from(Cifar10Options, {})
    assert (options.epochs, options.batch_size, options.val_size, options.widths) == (10, 512, 5000, [64, 256, 256])


def test_head_is_found_in_the_forward_pass_and_gets_the_head_lr():
    model = AirbenchNet((16, 32, 32))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    params = {**PARAMS, "param_groups": {**PARAMS["param_groups"], "head_lr_mult": 4.0}}
    ctx = TrialContext(0, 0, torch.device("cpu"))
    optimizer, _ = ctx.build(params, model, steps_per_epoch=10, epochs=1)
    head_group = next(g for g in optimizer.param_groups if any(p is model.head.weight for p in g["params"]))
    assert head_group["lr"] == pytest.approx(4 * 2e-3)
    assert all(g["lr"] == pytest.approx(2e-3) for g in optimizer.param_groups if g is not head_group)


def test_augmentation_is_reflect_pad_random_crop_and_flip():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
    idx = torch.randperm(64, generator=gen)[:48]
    out = augmented_batch(images, idx, torch.Generator().manual_seed(7))
    assert out.shape == (48, 3, 32, 32) and out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=torch.channels_last)
    # Replay the same draws and build each image the textbook way.
    replay = torch.Generator().manual_seed(7)
    shift = torch.randint(-2, 3, (48, 2), generator=replay)
    mirror = torch.rand(48, 1, generator=replay) < 0.5
    padded = F.pad(images[idx].float(), (2, 2, 2, 2), mode="reflect")
    for k in range(48):
        dy, dx = shift[k].tolist()
        expected = padded[k, :, 2 + dy:34 + dy, 2 + dx:34 + dx]
        if mirror[k]:
            expected = expected.flip(-1)
        assert torch.equal(out[k].float(), expected), k
    assert 0 < mirror.sum() < 48 and shift.unique().numel() == 5


# ---------------------------------------------------------------------------------------
# Training


@needs_archive
def test_short_cpu_training_learns_and_reports_each_epoch(cifar, cache_dir):
    trainer = small_trainer(cache_dir, train_subset=2000, epochs=2)
    recorder = Recorder()
    ctx = TrialContext(trial_number=0, seed=0, device=torch.device("cpu"), reporter=recorder)
    result = trainer.fit(PARAMS, ctx)
    assert [step for step, _ in recorder.calls] == [1, 2]
    for _, metrics in recorder.calls:
        assert set(metrics) == {"train_loss", "val_acc", "lr"}
        assert np.isfinite(metrics["train_loss"])
    assert recorder.calls[1][1]["train_loss"] < recorder.calls[0][1]["train_loss"]
    assert recorder.calls[-1][1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine ran to the end
    assert result["val_acc"] > 0.2, result
    assert 0.1 < result["test_acc"] <= 1.0
    assert result["val_acc"] == recorder.calls[-1][1]["val_acc"]


@needs_archive
def test_data_is_loaded_once_and_trials_are_seeded(cifar, cache_dir):
    trainer = small_trainer(cache_dir, train_subset=256, epochs=1, tta=False)
    ctx = TrialContext(0, seed=3, device=torch.device("cpu"))
    first = trainer.fit(PARAMS, ctx)
    data = trainer.data()
    assert len(data["train"][0]) == 256 and len(data["val"][0]) == 1000 and len(data["test"][0]) == 1000
    second = trainer.fit(PARAMS, ctx)
    assert trainer.data() is data  # reused, not reloaded
    assert first == second  # same seed, same trial


@needs_archive
def test_diverging_trial_raises_floating_point_error(cifar, cache_dir):
    trainer = small_trainer(cache_dir, train_subset=256, epochs=1, widths=[8, 16, 16], batch_size=64)
    params = {**PARAMS, "optimizer": {"name": "sgd", "lr": 1e30, "momentum": 0.9, "nesterov": False,
                                      "dampening": 0.0, "weight_decay": 0.0, "weight_decay_norm": None}}
    with pytest.raises(FloatingPointError, match="training loss"):
        trainer.fit(params, TrialContext(0, 0, torch.device("cpu")))


def test_precision_auto_uses_bf16_on_cuda_and_native_bf16_cpus_only():
    from optsearch.trainers.cifar10 import use_bf16

    assert use_bf16("auto", torch.device("cuda"))
    assert not use_bf16("fp32", torch.device("cuda")) and use_bf16("bf16", torch.device("cpu"))
    # independent of torch's own probe: the CPU flags the kernel reports (Linux)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's bf16 flags from")
    flags = set(cpuinfo.read_text().split())
    native = bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert use_bf16("auto", torch.device("cpu")) == native
