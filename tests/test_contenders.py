"""Today's contenders end to end: a digits study over [muon, sf_adamw, sf_sgd, radam] on a
real local Ray, SQLite storage and MLflow store; short CIFAR-10 runs of muon and the
schedule-free variants (the airbench net: channels_last conv filters, BatchNorm)."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from optsearch.search import config
from optsearch.search.exporting import export_trial
from optsearch.search.run import run_study
from optsearch.spaces.schedule_free import is_schedule_free
from optsearch.trainers.base import TrialContext, options_from
from optsearch.trainers.cifar10 import Cifar10Options, Cifar10Trainer
from tests.conftest import CIFAR_ARCHIVE, digits_config

VARIANTS = ["muon", "sf_adamw", "sf_sgd", "radam"]


@pytest.mark.slow
def test_digits_study_over_the_contenders_completes_trials_for_each(ray_cluster, tmp_path):
    doc = digits_config(tmp_path, n_trials=8, sampler={"name": "random", "seed": 1}, pruner={"name": "none"})
    doc["trainer"]["epochs"] = 4
    doc["space"] = {
        "optimizer": {
            "muon": {"lr": {"low": 0.005, "high": 0.05, "log": True}},
            "sf_adamw": {"lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
            "sf_sgd": {"lr": {"low": 0.1, "high": 1.0, "log": True}, "warmup_epochs": 1},
            "radam": {"lr": {"low": 1.0e-2, "high": 3.0e-2, "log": True}},  # rectified: a slow start
        },
        "schedule": "constant",
    }
    summary = run_study(config.validate(doc, str(tmp_path / "c.yaml"), tmp_path))
    storage = f"sqlite:///{tmp_path}/optsearch.db"
    study = optuna.load_study(study_name="t", storage=storage)
    assert summary["counts"]["complete"] == 8
    done: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        done[t.user_attrs["params"]["optimizer"]["name"]].append(t.value)
    assert all(done[v] for v in VARIANTS), {v: len(x) for v, x in done.items()}  # each variant completed trials
    assert all(value > 0.5 for values in done.values() for value in values), done  # and learned (10 classes)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("t")
    for run in client.search_runs([exp.experiment_id], max_results=100):
        if "optsearch.trial_number" not in run.data.tags:
            continue
        assert run.data.tags["optsearch.state"] == "complete"
        history = client.get_metric_history(run.info.run_id, "lr_step")  # the trajectory for each variant
        trial = study.trials[int(run.data.tags["optsearch.trial_number"])]
        params, budget = trial.user_attrs["params"], trial.user_attrs["build"]
        assert len(history) == budget["steps_per_epoch"] * budget["epochs"]
        lr = [m.value for m in sorted(history, key=lambda m: m.step)]
        if params["optimizer"]["name"] == "sf_sgd":  # its own warmup over one epoch, then flat
            spe = budget["steps_per_epoch"]
            assert lr[0] == pytest.approx(params["optimizer"]["lr"] / spe) and lr[-1] == params["optimizer"]["lr"]
        else:
            assert set(lr) == {params["optimizer"]["lr"]}
    for v in VARIANTS:  # every variant's best trial exports
        best = max((t for t in study.trials if t.user_attrs["params"]["optimizer"]["name"] == v), key=lambda t: t.value)
        assert "def build_optimizer(" in export_trial(storage, "t", trial_number=best.number)


needs_archive = pytest.mark.skipif(not CIFAR_ARCHIVE.is_file(), reason=f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")


@needs_archive
@pytest.mark.parametrize("optimizer", [
    {"name": "muon", "lr": 0.02, "adamw_lr": 3e-3},
    {"name": "sf_adamw", "lr": 5e-3, "warmup_epochs": 0.5},
    {"name": "sf_sgd", "lr": 0.5, "warmup_epochs": 0.5},
])
def test_cifar10_trains_with_muon_and_schedule_free(cifar, cifar_cache_dir, optimizer):
    trainer = Cifar10Trainer(options_from(Cifar10Options, {
        "root": str(CIFAR_ARCHIVE), "cache_dir": str(cifar_cache_dir), "val_size": 1000, "test_subset": 1000,
        "widths": [32, 64, 64], "batch_size": 128, "train_subset": 2000, "epochs": 2, "bn_batches": 3}))
    params = {"optimizer": optimizer, "schedule": {"name": "constant"}}
    result = trainer.fit(params, TrialContext(0, 0, torch.device("cpu")))
    assert math.isfinite(result["train_loss"]) and result["val_acc"] > 0.2 and result["test_acc"] > 0.2, result

    run = trainer.setup(params, TrialContext(0, 0, torch.device("cpu")))
    trainer.train_epoch(run, max_steps=4)
    used = trainer.eval_mode(run)
    if is_schedule_free(run.optimizer):
        assert used == 3 and not run.optimizer.param_groups[0]["train_mode"]  # evaluated at x, stats recomputed
        assert all(m.num_batches_tracked.item() == 3 for m in run.model.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    else:
        assert used == 0 and run.optimizer.param_groups[0]["use_muon"]  # the conv filters: Muon's
