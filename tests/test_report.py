"""Comparisons at equal budget, on known answers and on a real multi-variant study."""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow import MlflowClient

from optsearch.cli import main
from optsearch.search import config
from optsearch.search import stats
from optsearch.search.report import compare, compare_studies
from optsearch.search.run import run_study


def test_compare_gives_both_estimators_up_to_each_groups_trials():
    from optuna.trial import create_trial

    def trials(values):
        return [create_trial(value=v) for v in values]

    rows = compare({"a": trials([3.0, 1.0, 2.0]), "b": trials([0.5, 0.7, 0.1, 0.2, 0.9])})
    a, b = rows
    assert a["expected_max"] == pytest.approx({1: 2.0, 2: 8 / 3})  # unbiased: mean, all 2-subsets' best
    assert a["dodge"] == pytest.approx({1: 2.0, 2: 22 / 9})  # with replacement: 1/9*1 + 3/9*2 + 5/9*3
    assert list(b["expected_max"]) == [1, 2, 4] and b["expected_max"][4] == pytest.approx(
        stats.expected_max_unbiased([0.5, 0.7, 0.1, 0.2, 0.9], 4))
    assert 4 not in a["expected_max"]  # never a value beyond a group's trials
    low = compare({"a": trials([3.0, 1.0, 2.0])}, maximize=False)[0]
    assert low["dodge"][2] == pytest.approx(14 / 9) and low["best"] == 1.0


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
    for r in rows:
        assert max(r["expected_max"]) == 2 ** int(math.log2(r["values"]))  # up to the group's own trials
        assert r["expected_max"][1] <= r["dodge"][2] <= r["expected_max"][2] <= r["best"]
    assert main(["compare", "quickstart-compare", "--by", "schedule"]) == 0
    out = capsys.readouterr().out
    assert "sgdr" in out and "onecycle" in out


def test_compare_unknown_study_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    optuna.create_study(study_name="real", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert main(["compare", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study = 'nope'" in err
