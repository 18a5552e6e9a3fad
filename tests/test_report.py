"""Comparisons at equal budget, on known answers and on a real multi-variant study."""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow import MlflowClient

from optsearch.cli import main
from optsearch.search import config
from optsearch.search.report import compare_studies, expected_max
from optsearch.search.run import run_study


def test_expected_max_known_answers():
    assert expected_max([3, 1, 2], 1) == pytest.approx(2.0)  # k=1: the mean
    assert expected_max([3, 1, 2], 2) == pytest.approx(22 / 9)  # 1/9*1 + 3/9*2 + 5/9*3
    assert expected_max([3, 1, 2], 200) == pytest.approx(3.0, abs=1e-12)
    assert expected_max([3, 1, 2], 2, maximize=False) == pytest.approx(14 / 9)  # best = lowest
    assert expected_max([0.5], 7) == 0.5


def test_sgd_vs_adamw_with_sgdr_and_onecycle(ray_cluster, tmp_path, monkeypatch, capsys):
    """A study over [sgd, adamw] x [sgdr, onecycle] on digits; MLflow shows the lr per step."""
    monkeypatch.chdir(tmp_path)
    cfg = config.load("quickstart-compare.yaml", ["study.n_trials=10", "trainer.epochs=4",
                                                  "study.pruner=none", "study.sampler={name: random, seed: 3}"])
    run_study(cfg)
    study = optuna.load_study(study_name="quickstart-compare", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert len(study.trials) == 10
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("quickstart-compare")
    runs = {int(r.data.tags["optsearch.trial_number"]): r
            for r in client.search_runs([exp.experiment_id]) if "optsearch.trial_number" in r.data.tags}
    seen = set()
    for t in study.trials:
        params, budget = t.user_attrs["params"], t.user_attrs["build"]
        total = budget["steps_per_epoch"] * budget["epochs"]
        lr = [m.value for m in sorted(client.get_metric_history(runs[t.number].info.run_id, "lr_step"),
                                      key=lambda m: m.step)]
        assert len(lr) == total  # one point per optimizer step (under 500 steps: no subsampling)
        sched = params["schedule"]
        seen.add((params["optimizer"]["name"], sched["name"]))
        base = params["optimizer"]["lr"]
        if sched["name"] == "onecycle":
            peak = lr.index(max(lr))
            assert abs(peak - (sched["pct_start"] * total - 1)) <= 1
            assert max(lr) == pytest.approx(base, rel=1e-3) and lr[0] == pytest.approx(base / sched["div_factor"])
        else:  # sgdr: a restart to the base lr after T_0 epochs
            t0 = round(sched["T_0"] * budget["steps_per_epoch"])
            assert lr[0] == pytest.approx(base)
            if t0 < total:
                assert lr[t0] == pytest.approx(base) and lr[t0 - 1] < base * 0.1
    assert {o for o, _ in seen} == {"sgd", "adamw"} and {s for _, s in seen} == {"sgdr", "onecycle"}

    rows, maximize = compare_studies(f"sqlite:///{tmp_path}/optsearch.db", ["quickstart-compare"])
    groups = {r["group"]: r for r in rows}
    assert set(groups) == {"sgd", "adamw"} and maximize
    common = min(r["trials"] for r in rows)
    for r in rows:
        assert max(r["expected_max"]) == 2 ** int(math.log2(common))  # same k for every variant
        assert r["expected_max"][1] <= r["best"]
    assert main(["compare", "quickstart-compare", "--by", "schedule"]) == 0
    out = capsys.readouterr().out
    assert "sgdr" in out and "onecycle" in out


def test_compare_unknown_study_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    optuna.create_study(study_name="real", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert main(["compare", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study = 'nope'" in err
