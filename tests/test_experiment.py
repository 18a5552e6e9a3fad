"""``optsearch compare CONFIG``: arms interleaved on one set of workers, seed re-runs paired
across arms, the report against the stored trials, MLflow's runs, resume; on a real local
Ray, real SQLite and MLflow stores. A synthetic trainer (known values, milliseconds per
trial) for the checks; the bundled claim-quick config, small, through the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from optsearch.cli import main
from optsearch.errors import ConfigError
from optsearch.search import config
from optsearch.search.experiment import RERUN, run_experiment

# Arm "good" (adamw) peaks at 0.95, arm "bad" (sgd) at 0.85, both at lr = 1e-2; seeds add a
# little noise. The trainer says its split sizes (resolution 1/1000) and builds a real
# optimizer, so the report has schedules to draw.
TRAINER = '''
import math, random
from dataclasses import dataclass

import torch

from optsearch.constraints import at_least
from optsearch.trainers.base import option


@dataclass
class Options:
    epochs: int = option(3, at_least(1))

    def eval_sizes(self):
        return {"val_acc": 1000, "test_acc": 1000}


class Known:
    Options = Options

    def __init__(self, options):
        self.epochs = options.epochs

    def fit(self, params, ctx):
        ctx.build(params, torch.nn.Linear(2, 2), steps_per_epoch=5, epochs=self.epochs)
        peak = 0.95 if params["optimizer"]["name"] == "adamw" else 0.85
        quality = peak - 0.05 * abs(math.log10(params["optimizer"]["lr"]) + 2)
        rng = random.Random(ctx.seed)
        val = quality + rng.gauss(0, 0.002)
        for epoch in range(self.epochs):
            ctx.report(epoch + 1, {"val_acc": val - 0.01 * (self.epochs - epoch - 1)})
        return {"val_acc": val, "test_acc": quality + rng.gauss(0, 0.002), "seed": float(ctx.seed)}
'''


def experiment_doc(tmp_path, n_trials=6) -> dict:
    return {
        "study": {"name": "x", "n_trials": n_trials, "storage": f"sqlite:///{tmp_path}/optsearch.db"},
        "trainer": {"target": "known_trainer:Known", "epochs": 3},
        "space": {"schedule": "constant"},
        "arms": {"good": {"optimizer": {"adamw": {"lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True}}}},
                 "bad": {"optimizer": {"sgd": {"lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True}}}}},
        "verdict": {"top_k": 2, "seeds": 3, "k": [1, 2, 4, 8]},
        "workers": {"count": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }


def trials(tmp_path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optsearch.db").get_trials()


@pytest.fixture
def known(tmp_path, monkeypatch):
    (tmp_path / "known_trainer.py").write_text(TRAINER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # workers import the target from the driver's working directory
    return tmp_path


def test_experiment_end_to_end_report_and_resume(ray_cluster, known):
    tmp_path = known
    exp = config.validate_experiment(experiment_doc(tmp_path), str(tmp_path / "x.yaml"), tmp_path)
    summary = run_experiment(exp, report_dir=tmp_path / "rep")
    assert not summary["interrupted"] and summary["report"] == str(tmp_path / "rep")
    seeds = exp.verdict.seeds
    assert len(seeds) == 3

    # The search: each arm its own study, the same budget, started in turns.
    search = {arm: trials(tmp_path, f"x.{arm}") for arm in ("good", "bad")}
    assert {arm: len(ts) for arm, ts in search.items()} == {"good": 6, "bad": 6}
    assert all(t.state == TrialState.COMPLETE for ts in search.values() for t in ts)
    order = sorted(((t.datetime_start, arm) for arm, ts in search.items() for t in ts))
    for i in range(1, len(order) + 1):  # at any moment the arms differ by at most the workers (2)
        started = [arm for _, arm in order[:i]]
        assert abs(started.count("good") - started.count("bad")) <= 2

    # The re-runs: each arm's top 2 configs, each on the same 3 seeds (the trainer saw them).
    by_arm = {}
    for arm in ("good", "bad"):
        reruns = trials(tmp_path, f"x.{arm}.reruns")
        assert len(reruns) == 2 * 3 and all(t.state == TrialState.COMPLETE for t in reruns)
        pairs = {(t.user_attrs[RERUN]["of"], t.user_attrs[RERUN]["seed"]) for t in reruns}
        top2 = sorted(search[arm], key=lambda t: -t.value)[:2]
        assert pairs == {(t.number, s) for t in top2 for s in seeds}
        for t in reruns:
            assert t.user_attrs["final_seed"] == t.user_attrs[RERUN]["seed"]  # it ran with that seed
            assert t.params == search[arm][t.user_attrs[RERUN]["of"]].params  # and that config
        by_arm[arm] = reruns

    # The report's numbers, against the stored trials.
    report = json.loads((tmp_path / "rep" / "verdict.json").read_text())
    text = (tmp_path / "rep" / "report.md").read_text()
    for row in report["arms"]:
        values = [t.value for t in search[row["name"]]]
        at_k = row["at_k"]
        assert at_k["1"]["unbiased"] == pytest.approx(np.mean(values))  # E[max_1]: the mean
        curve = {c["k"]: c["unbiased"] for c in row["curve"]}
        assert max(curve) == 6 and curve[6] == pytest.approx(max(values))  # E[max_N]: the best, no k > N
        subsets = list(itertools.combinations(values, 3))
        assert curve[3] == pytest.approx(sum(map(max, subsets)) / len(subsets))
        assert "8" not in at_k  # k = 8 > 6 trials: no value
        winner = row["winner"]["number"]
        mine = [t for t in by_arm[row["name"]] if t.user_attrs[RERUN]["of"] == winner]
        assert row["verdict_mean"] == pytest.approx(np.mean([t.user_attrs["final_test_acc"] for t in mine]))
        assert row["verdict_std"] == pytest.approx(np.std([t.user_attrs["final_test_acc"] for t in mine], ddof=1))
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {row['name']} | 6 |"))
        assert f"{np.mean(values):.4f}" in line and f"{max(values):.4f}" in line
    k_line = next(ln for ln in text.splitlines() if ln.startswith("| good | ") and "[" in ln)
    assert k_line.rstrip(" |").endswith("–")  # the k = 8 column
    assert report["leader"] == "good" and report["verdicts"][0]["label"] == "A better"
    assert report["resolution"] == pytest.approx(1 / 1000)
    for name in ("expected_max.png", "pairwise.png", "reruns.png", "importance.png", "schedules.png"):
        assert (tmp_path / "rep" / name).is_file() and f"]({name})" in text

    # MLflow: the experiment's run holds the report; the four study runs are nested under it.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = client.get_experiment_by_name("x").experiment_id
    runs = client.search_runs([exp_id], max_results=1000)
    [parent] = [r for r in runs if r.data.tags.get("optsearch.role") == "experiment"]
    assert parent.info.status == "FINISHED" and parent.info.run_id == summary["tracking"]["parent_run_id"]
    studies_runs = [r for r in runs if r.data.tags.get("optsearch.role") == "study"]
    assert sorted(r.data.tags["optsearch.study"] for r in studies_runs) == [
        "x.bad", "x.bad.reruns", "x.good", "x.good.reruns"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in studies_runs)
    trial_runs = [r for r in runs if "optsearch.trial_number" in r.data.tags]
    assert len(trial_runs) == 6 + 6 + 6 + 6  # each trial once: a queued re-run is never backfilled as well
    assert len({(r.data.tags["optsearch.study"], r.data.tags["optsearch.trial_number"]) for r in trial_runs}) == 24
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/expected_max.png", "report/verdict.json"} <= artifacts
    assert parent.data.metrics["good.test_acc_mean"] == pytest.approx(report["arms"][0]["verdict_mean"])

    # Resume with a larger budget: both arms grow to 8; the re-runs follow the new top 2.
    exp = config.validate_experiment(experiment_doc(tmp_path, n_trials=8), str(tmp_path / "x.yaml"), tmp_path)
    run_experiment(exp, report_dir=tmp_path / "rep")
    for arm in ("good", "bad"):
        search = trials(tmp_path, f"x.{arm}")
        assert len(search) == 8 and len({tuple(sorted(t.params.items())) for t in search}) == 8  # new points
        reruns = trials(tmp_path, f"x.{arm}.reruns")
        pairs = [(t.user_attrs[RERUN]["of"], t.user_attrs[RERUN]["seed"]) for t in reruns]
        assert len(pairs) == len(set(pairs))  # no pair twice
        top2 = sorted(search, key=lambda t: -t.value)[:2]
        assert {(t.number, s) for t in top2 for s in seeds} <= set(pairs)
    # At its totals: nothing runs, no new MLflow run, the report is written again.
    before = len(client.search_runs([exp_id], max_results=1000))
    (tmp_path / "rep" / "report.md").unlink()
    summary = run_experiment(exp, report_dir=tmp_path / "rep")
    assert summary["ran"] == {} and (tmp_path / "rep" / "report.md").is_file()
    assert len(client.search_runs([exp_id], max_results=1000)) == before


def test_experiment_config_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = experiment_doc(tmp_path)
    doc["trainer"] = {"name": "digits", "epochs": 2}

    def error(mutate) -> str:
        d = yaml.safe_load(yaml.safe_dump(doc))
        mutate(d)
        (tmp_path / "x.yaml").write_text(yaml.safe_dump(d))
        assert main(["compare", "x.yaml", "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("optsearch: error: ")
        return err

    assert "x.yaml: arms = " in error(lambda d: d["arms"].pop("bad"))  # one arm compares nothing
    assert "arms = 'a.b'" in error(lambda d: d["arms"].update({"a.b": {}}))
    assert "arms.good.lr = " in error(lambda d: d["arms"]["good"].update(lr=1))  # not a space section
    err = error(lambda d: d["arms"]["good"]["optimizer"]["adamw"]["lr"].update(low=-1))
    assert "arms.good.optimizer.adamw.lr = " in err  # the key as written: under the arm
    assert "space.schedule = " in error(lambda d: d.update(space={"schedule": "nope"}))  # the shared space
    assert "verdict.seeds = [1, 1]" in error(lambda d: d["verdict"].update(seeds=[1, 1]))
    assert "verdict.k = [4, 2]" in error(lambda d: d["verdict"].update(k=[4, 2]))
    assert "verdict.top_k = 0" in error(lambda d: d["verdict"].update(top_k=0))
    assert "verdict.nope" in error(lambda d: d["verdict"].update(nope=1))
    assert "study.sampler.name" in error(lambda d: d["study"].update(sampler="nope"))
    with pytest.raises(ConfigError, match="experiment: run it with `optsearch compare`"):
        (tmp_path / "x.yaml").write_text(yaml.safe_dump(doc))
        config.load(str(tmp_path / "x.yaml"))
    assert main(["compare", "nothing-here.yaml"]) == 2
    assert "nothing-here.yaml: no such config file" in capsys.readouterr().err
    (tmp_path / "plain.yaml").write_text("study: {n_trials: 2}\ntrainer: digits\n")
    assert main(["compare", "plain.yaml"]) == 2
    assert "plain.yaml: arms = None: missing" in capsys.readouterr().err


def test_experiment_defaults_are_fair_and_seeds_fresh(tmp_path):
    exp = config.validate_experiment(experiment_doc(tmp_path), str(tmp_path / "x.yaml"), tmp_path)
    for cfg in exp.arms.values():
        assert (cfg.study.sampler.name, cfg.study.pruner.name) == ("qmc", "none")
        assert cfg.experiment == "x" and cfg.study.name.startswith("x.")
    from optsearch.search.coordinator import trial_seed

    search_seeds = {trial_seed(0, n) for n in range(100_000)}
    assert len(exp.verdict.seeds) == 3 and not search_seeds & set(exp.verdict.seeds)
    assert exp.rerun("good", 6).study.name == "x.good.reruns" and exp.rerun("good", 6).study.pruner.name == "none"
    doc = experiment_doc(tmp_path)
    doc["study"].update(sampler={"name": "tpe"}, pruner={"name": "hyperband"})
    doc["space"]["param_groups"] = {"head_lr_mult": 2.0}
    doc["arms"]["bad"]["param_groups"] = {"head_lr_mult": 1.0}
    exp = config.validate_experiment(doc, str(tmp_path / "x.yaml"), tmp_path)
    assert exp.arms["good"].study.sampler.name == "tpe"  # the practitioner's option, when asked
    assert exp.arms["good"].space.groups["head_lr_mult"].value == 2.0  # the shared section
    assert exp.arms["bad"].space.groups["head_lr_mult"].value == 1.0  # the arm's own replaces it


@pytest.mark.slow
def test_claim_quick_from_a_fresh_directory(tmp_path):
    """The acceptance command, small: every arm, the report, its figures, MLflow's runs; the
    terminal's summary fits 80 columns."""
    t0 = time.time()
    argv = [sys.executable, "-m", "optsearch", "compare", "claim-quick.yaml", "--set", "study.n_trials=3",
            "--set", "trainer.epochs=2", "--set", "verdict.seeds=2", "--set", "verdict.top_k=1",
            "--set", "verdict.k=[1,2]", "--workers", "2"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arms = ["sgd", "adam_l2", "adamw", "amsgrad", "adamw+sgdr", "adamw+onecycle", "muon", "sf_adamw"]
    folder = tmp_path / "report-claim-quick"
    text = (folder / "report.md").read_text()
    for name in ("expected_max.png", "pairwise.png", "reruns.png", "importance.png", "schedules.png"):
        assert (folder / name).is_file() and f"]({name})" in text
    for arm in arms:
        assert len(trials(tmp_path, f"claim-quick.{arm}")) == 3
        assert len(trials(tmp_path, f"claim-quick.{arm}.reruns")) == 2
        assert f"**{arm}**" in text  # its search space
    out = proc.stdout
    table_and_verdict = out.split("report: ")[0]  # then paths and links, not wrapped (copied whole)
    assert max(len(line) for line in table_and_verdict.splitlines()) <= 80
    for arm in arms:
        assert any(line.startswith(arm + " ") for line in out.splitlines())  # each arm's row, its name whole
    assert "test_acc" in out and "val_acc" in out and "report-claim-quick/report.md" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("claim-quick").experiment_id], max_results=1000)
    assert len([r for r in runs if r.data.tags.get("optsearch.role") == "experiment"]) == 1
    assert len([r for r in runs if r.data.tags.get("optsearch.role") == "study"]) == 16
    assert len([r for r in runs if "optsearch.trial_number" in r.data.tags]) == 8 * 3 + 8 * 2
    print(f"claim-quick (small) took {time.time() - t0:.0f} s")


def test_a_rerun_retried_after_a_lost_worker_keeps_its_seed_and_is_not_queued_twice(tmp_path):
    """In process, no Ray: the re-run phase's coordinator over one arm's queued re-runs."""
    from optsearch.search import study as studies
    from optsearch.search.experiment import ArmsCoordinator, queue_reruns, rerun_info
    from optsearch.search.protocol import Outcome

    doc = experiment_doc(tmp_path)
    doc["trainer"] = {"name": "digits", "epochs": 1}
    doc["tracking"]["enabled"] = False
    exp = config.validate_experiment(doc, str(tmp_path / "x.yaml"), tmp_path)
    arm = exp.arms["good"]
    search = optuna.create_study(study_name=arm.study.name, storage=arm.study.storage, direction="maximize")
    for lr, value in ((1e-2, 0.9), (1e-3, 0.8), (1e-1, 0.7)):
        search.enqueue_trial({"adamw.lr": lr})
        t = search.ask()
        arm.space.sample(t)
        search.tell(t, value)
    from optsearch.search.experiment import top_configs

    top = top_configs(search.get_trials(), 2, True)
    assert [t.number for t in top] == [0, 1]
    cfg = exp.rerun("good", 1)
    prepared = studies.prepare(cfg)
    target = queue_reruns(cfg, top, exp.verdict.seeds)
    assert target == 2 * 3
    cfg = exp.rerun("good", target)
    coord = ArmsCoordinator({"good": cfg}, {"good": prepared.owner}, {}, {}, reruns=True)
    job = coord.ask(0)
    assert (job.study, job.seed) == ("good", exp.verdict.seeds[0])  # seed by seed: the first seed first
    assert job.params["optimizer"]["lr"] == pytest.approx(1e-2)
    lost = coord.worker_lost(0, "killed")
    assert lost["trial"] == f"{job.number} of arm good"
    jobs = [coord.ask(1) for _ in range(2 * 3)]  # the five other pairs, then the retry (queued last)
    assert coord.ask(1) is None
    again = jobs[-1]
    assert again.number != job.number and again.seed == job.seed and again.params == job.params
    assert sorted((j.params["optimizer"]["lr"], j.seed) for j in jobs) == sorted(
        (lr, s) for lr in (1e-2, 1e-3) for s in exp.verdict.seeds)  # each pair once, with its seed
    for j in jobs[:-1]:
        coord.finish(j.number, Outcome(TrialState.COMPLETE, {"val_acc": 0.9}), "good")
    coord.close(interrupted=True)  # the retry, asked and not finished, runs again next time
    studies.release_claim(cfg.study, prepared.owner)
    stored = trials(tmp_path, cfg.study.name)
    by_number = {t.number: t for t in stored}
    assert rerun_info(by_number[again.number], by_number) == {"of": 0, "seed": exp.verdict.seeds[0]}
    # Queued again (a resume): nothing twice, the target still one trial per pair.
    assert queue_reruns(cfg, top, exp.verdict.seeds) == 2 * 3
    pairs = [(rerun_info(t, by_number)["of"], rerun_info(t, by_number)["seed"]) for t in trials(tmp_path, cfg.study.name)
             if t.state != TrialState.FAIL]
    assert len(pairs) == len(set(pairs)) == 6
