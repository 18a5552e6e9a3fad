"""The whole path on a real local Ray, real SQLite Optuna storage and a real MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from optsearch.search import config
from optsearch.search.run import run_study
from optsearch.search.workers import plan
from tests.conftest import digits_config


def load_doc(doc: dict, tmp_path):
    return config.validate(doc, str(tmp_path / "c.yaml"), tmp_path)


def mlflow_runs(tmp_path, experiment="t"):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, trials


def test_study_end_to_end_and_resume(ray_cluster, tmp_path):
    doc = digits_config(tmp_path, n_trials=8)
    summary = run_study(load_doc(doc, tmp_path))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert len(study.trials) == 8
    states = {t.state for t in study.trials}
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states  # lr down to 1e-5 gets pruned
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == 8
    for t in study.trials:
        assert t.user_attrs["params"]["optimizer"]["name"] == "adamw"
        assert t.user_attrs["build"]["epochs"] == 4
    assert summary["best"]["value"] == study.best_value
    import shutil

    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(tmp_path / "optsearch.db", alone / "optsearch.db")  # without its -wal file
    assert len(optuna.load_study(study_name="t", storage=f"sqlite:///{alone}/optsearch.db").trials) == 8

    client, parents, trials = mlflow_runs(tmp_path)
    assert len(parents) == 1 and len(trials) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    by_number = {int(r.data.tags["optsearch.trial_number"]): r for r in trials}
    assert sorted(by_number) == list(range(8))
    for t in study.trials:
        run = by_number[t.number]
        assert run.data.tags["optsearch.state"] == t.state.name.lower().replace("fail", "failed")
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == sorted(t.intermediate_values)  # per-epoch, with step
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(t.user_attrs["params"]["optimizer"]["lr"], rel=1e-5)
    parent = parents[0]
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert float(parent.data.params["best.optimizer.lr"]) == pytest.approx(
        study.best_trial.user_attrs["params"]["optimizer"]["lr"], rel=1e-5)
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "best_params.yaml", "best_schedule.png"} <= artifacts

    # Resume: same config with a larger total grows the same study, none lost or duplicated.
    doc["study"]["n_trials"] = 11
    summary = run_study(load_doc(doc, tmp_path))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert sorted(t.number for t in study.trials) == list(range(11))
    assert summary["this_run"]["complete"] + summary["this_run"]["pruned"] == 3
    first = {t.params["adamw.lr"] for t in study.trials[:8]}
    assert not first & {t.params["adamw.lr"] for t in study.trials[8:]}  # the resumed sampler moved on
    _, parents, trials = mlflow_runs(tmp_path)
    assert len(parents) == 2 and len(trials) == 11

    # Already at its total: nothing runs, nothing is added, no MLflow run is opened.
    summary = run_study(load_doc(doc, tmp_path))
    assert sum(summary["this_run"].values()) == 0
    assert len(optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db").trials) == 11
    assert len(mlflow_runs(tmp_path)[1]) == 2


def test_a_sampled_point_the_builders_reject_fails_that_trial_not_the_study(ray_cluster, tmp_path):
    # 10 epochs; a 2-epoch warmup ends after the first milestone (epoch 1): those points are
    # rejected by the builders. The config says so when loaded, and the study runs its budget.
    doc = digits_config(tmp_path, n_trials=6, pruner={"name": "none"})
    doc["trainer"]["epochs"] = 10
    doc["space"]["schedule"] = {"step": {"milestones": [0.1, 0.5], "warmup_epochs": {"choices": [0, 2]}}}
    cfg = load_doc(doc, tmp_path)
    assert len(cfg.notes) == 1 and "space.schedule.step.milestones" in cfg.notes[0]
    summary = run_study(cfg)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert len(study.trials) == 6
    warm = [t for t in study.trials if t.params["step.warmup_epochs"] == 2]
    assert warm and len(warm) < 6  # the seeded sampler draws both
    for t in study.trials:
        if t.params["step.warmup_epochs"] == 2:
            assert t.state == TrialState.FAIL and "first milestone" in t.user_attrs["error"]
        else:
            assert t.state == TrialState.COMPLETE
    assert summary["counts"]["failed"] == len(warm) and summary["counts"]["complete"] == 6 - len(warm)


USER_TRAINER = '''
import optuna

def fit(params, ctx):
    lr = params["optimizer"]["lr"]
    if lr > 0.1:
        raise RuntimeError("diverged")
    for epoch in range(3):
        ctx.report(epoch + 1, {"val_acc": lr * (epoch + 1)})
    return {"val_acc": lr * 3, "test_acc": 0.5}
'''


def test_user_trainer_failures_are_recorded_and_study_goes_on(ray_cluster, tmp_path, monkeypatch):
    (tmp_path / "my_trainer_mod.py").write_text(USER_TRAINER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # workers import the target from the driver's working directory
    doc = digits_config(tmp_path, n_trials=6, pruner={"name": "none"})
    doc["trainer"] = {"target": "my_trainer_mod:fit"}
    doc["space"]["optimizer"]["adamw"]["lr"] = {"choices": [0.01, 0.5]}
    summary = run_study(load_doc(doc, tmp_path))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert len(study.trials) == 6
    for t in study.trials:
        if t.params["adamw.lr"] == 0.5:
            assert t.state == TrialState.FAIL and "diverged" in t.user_attrs["error"]
        else:
            assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.03)
    assert summary["counts"]["failed"] == sum(t.params["adamw.lr"] == 0.5 for t in study.trials)
    _, _, trials = mlflow_runs(tmp_path)
    failed = [r for r in trials if r.data.tags["optsearch.state"] == "failed"]
    assert all(r.info.status == "FAILED" and "diverged" in r.data.tags["optsearch.error"] for r in failed)


def test_trials_a_crashed_run_left_running_are_failed_and_run_again(ray_cluster, tmp_path):
    doc = digits_config(tmp_path, n_trials=3)
    storage = f"sqlite:///{tmp_path}/optsearch.db"
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    stale = study.ask()  # a trial an interrupted run left RUNNING, with its params
    lr = stale.suggest_float("adamw.lr", 1e-5, 1.0, log=True)
    summary = run_study(load_doc(doc, tmp_path))
    trials = optuna.load_study(study_name="t", storage=storage).trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["failure"] == "interrupted"
    assert trials[0].user_attrs["retried"] is True  # run again, not counted
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params["adamw.lr"] == lr and retry[0].state != TrialState.FAIL
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == 3 and len(trials) == 4
    assert all(t.state != TrialState.RUNNING for t in trials)


def test_plan_falls_back_to_cpu_actors_without_gpus():
    assert plan({"CPU": 2.0}) == plan({"CPU": 2.0, "GPU": 0.0})
    cpu = plan({"CPU": 8.0})
    assert cpu.count == 4 and cpu.num_gpus == 0 and cpu.kind == "cpu"
    assert plan({"CPU": 1.0}).count == 1
    assert plan({"CPU": 2.0}, count=3).num_cpus == pytest.approx(2 / 3)
    gpu = plan({"CPU": 16.0, "GPU": 2.0})
    assert gpu.count == 2 and gpu.num_gpus == 1.0
    shared = plan({"CPU": 16.0, "GPU": 1.0}, trials_per_gpu=4)
    assert shared.count == 4 and shared.num_gpus == 0.25


def test_cpu_actors_start_on_a_gpu_less_cluster(ray_cluster):
    import ray

    from optsearch.search.workers import TrialWorker

    p = plan(ray.cluster_resources())
    assert p.num_gpus == 0
    actor = ray.remote(TrialWorker).options(num_cpus=p.num_cpus, num_gpus=p.num_gpus).remote("digits", None, {}, 1)
    info = ray.get(actor.info.remote(), timeout=60)  # a num_gpus=1 actor would hang here
    assert info["device"] == "cpu"
    ray.kill(actor)


@pytest.mark.slow
def test_quickstart_cli_acceptance(tmp_path):
    """The README's main command, as a user runs it: under 2 minutes, pruning visible."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "optsearch", "study", "configs/quickstart.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.time() - t0 < 120
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert len(study.trials) == 24
    _, parents, trials = mlflow_runs(tmp_path, "quickstart")
    assert len(parents) == 1 and len(trials) == 24
    assert any(r.data.tags["optsearch.state"] == "pruned" for r in trials)
    assert "workflowType=machine_learning" in proc.stdout
    assert "created in memory" not in proc.stdout + proc.stderr  # the plots' study says nothing


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_fails_running_ones(tmp_path):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "study", "quickstart.yaml",
                             "--set", "study.n_trials=200", "--set", "study.pruner=none"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{tmp_path}/optsearch.db"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and done < 3:
        time.sleep(1)
        try:
            done = len([t for t in optuna.load_study(study_name="quickstart", storage=storage).trials
                        if t.state == TrialState.COMPLETE])
        except KeyError:
            pass
    assert done >= 3, "the study did not get going"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= done  # nothing finished is lost
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert "Traceback" not in err
    _, parents, runs = mlflow_runs(tmp_path, "quickstart")
    assert parents[0].info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in runs)


def test_the_first_ctrl_c_asks_for_a_stop_and_the_second_leaves():
    """The driver's handler (run.CtrlC), with real signals: the first SIGINT raises nothing
    where it lands and is acted on at the loop's next check; the second raises at once; the
    handler before is back afterwards."""
    import signal

    from optsearch.search.run import CtrlC

    before = signal.getsignal(signal.SIGINT)
    with CtrlC() as ctrl_c:
        ctrl_c.check()  # nothing pressed yet
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler has run: no KeyboardInterrupt here
        assert ctrl_c.pressed == 1
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_cifar10_config_on_cpu_against_the_shared_archive(cifar, cifar_cache_dir, tmp_path):
    """The real cifar10-adamw config, on CPU with small overrides, end to end."""
    from tests.conftest import CIFAR_ARCHIVE

    sets = ["study.n_trials=2", "trainer.epochs=1", "trainer.train_subset=2000", "trainer.val_size=1000",
            "trainer.test_subset=1000", f"trainer.root={CIFAR_ARCHIVE}", f"trainer.cache_dir={cifar_cache_dir}"]
    argv = [sys.executable, "-m", "optsearch", "study", "cifar10-adamw.yaml"]
    for s in sets:
        argv += ["--set", s]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="cifar10-adamw", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("error")
        assert 0.0 <= t.value <= 1.0 and 0.0 <= t.user_attrs["final_test_acc"] <= 1.0
        assert t.user_attrs["build"]["train_size"] == 2000
    _, parents, trials = mlflow_runs(tmp_path, "cifar10-adamw")
    assert len(parents) == 1 and len(trials) == 2


def test_a_stored_study_keeps_its_direction_and_metric(ray_cluster, tmp_path, monkeypatch, capsys):
    from optsearch.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["study", "quickstart.yaml", "--set", "study.n_trials=2", "--set", "trainer.epochs=2"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--set", "study.direction=minimize"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study.direction = 'minimize': study 'quickstart'" in err
    assert main(args + ["--set", "study.metric=test_acc"]) == 2
    assert "study.metric = 'test_acc'" in capsys.readouterr().err
    _, parents, _ = mlflow_runs(tmp_path, "quickstart")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # refused runs left no trace


BAD_INPUT_TRAINER = '''
from optsearch.errors import ConfigError

def fit(params, ctx):
    raise ConfigError("trainer.root", "/no/such/data", "no CIFAR-10 here")
'''


def test_bad_trainer_input_stops_the_study_with_exit_2(ray_cluster, tmp_path, monkeypatch, capsys):
    from optsearch.cli import main

    (tmp_path / "bad_input_trainer.py").write_text(BAD_INPUT_TRAINER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code = main(["study", "quickstart.yaml", "--set", "trainer={target: 'bad_input_trainer:fit'}",
                 "--set", "study.n_trials=20"])
    assert code == 2
    err = capsys.readouterr().err
    assert "quickstart.yaml: trainer.root = '/no/such/data': no CIFAR-10 here" in err
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{tmp_path}/optsearch.db")
    ran = [t for t in study.trials if t.state != TrialState.WAITING]  # (one more may be sampled ahead, queued)
    assert 1 <= len(ran) <= 2 and len(study.trials) - len(ran) <= 1  # the budget is not burnt on the same error
    assert all(t.state == TrialState.FAIL for t in ran)


def test_one_process_at_a_time_runs_a_study(ray_cluster, tmp_path, monkeypatch, capsys):
    from optsearch.cli import main
    from optsearch.search.study import OWNER

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/optsearch.db"
    optuna.create_study(study_name="quickstart", storage=url, direction="maximize")
    storage = optuna.storages.RDBStorage(url)
    sid = storage.get_study_id_from_name("quickstart")

    def claim(**owner):
        storage.set_study_system_attr(sid, OWNER, {"host": "elsewhere", "pid": 1, "started": None, **owner})

    claim(beat=time.time())  # alive on another host: its heartbeat is fresh
    args = ["study", "quickstart.yaml", "--set", "study.n_trials=1", "--set", "trainer.epochs=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is being run by another optsearch process (pid 1 on elsewhere" in err
    claim(beat=time.time() - 3600)  # crashed long ago
    assert main(args) == 0
    assert len(optuna.load_study(study_name="quickstart", storage=url).trials) == 1
    assert storage.get_study_system_attrs(sid)[OWNER] is None  # released at the end
    assert "optsearch.owner" not in optuna.load_study(study_name="quickstart", storage=url).user_attrs


MODULES_PROBE = '''
import sys

def fit(params, ctx):
    ctx.report(1, {"val_acc": 0.5})
    main = getattr(sys.modules["__main__"], "__file__", None) or ""
    return {"val_acc": 0.5, "has_ray": float("ray" in sys.modules), "ran_main": float(main.endswith(".py"))}
'''


def test_a_trainer_process_imports_neither_ray_nor_the_actors_main_script(ray_cluster, tmp_path, monkeypatch):
    """multiprocessing's spawn would run the Ray actor's main script (Ray's worker) again in
    the trainer process, as its main module; it is kept out, and so is Ray."""
    (tmp_path / "probe_mod.py").write_text(MODULES_PROBE)
    monkeypatch.chdir(tmp_path)
    doc = digits_config(tmp_path, n_trials=2, pruner={"name": "none"})
    doc["trainer"] = {"target": "probe_mod:fit"}
    doc["tracking"]["enabled"] = False
    run_study(load_doc(doc, tmp_path))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        assert (t.user_attrs["final_has_ray"], t.user_attrs["final_ran_main"]) == (0.0, 0.0)


NICE_PROBE = '''
import os

def fit(params, ctx):
    ctx.report(1, {"val_acc": 0.5})
    return {"val_acc": 0.5, "nice": float(os.nice(0))}
'''


def test_trials_run_at_the_drivers_priority_not_rays_background_one(tmp_path):
    """Ray starts its workers at niceness 15 (RAY_worker_niceness) unless told otherwise,
    where trials starve beside any busy process (a quickstart beside two finished no trial in
    120 s). The Ray that the CLI starts runs them at 0: the trainer process says so."""
    (tmp_path / "nice_mod.py").write_text(NICE_PROBE)
    doc = digits_config(tmp_path, n_trials=1, pruner={"name": "none"})
    doc["trainer"] = {"target": "nice_mod:fit"}
    doc["tracking"]["enabled"] = False
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}  # not the test session's
    proc = subprocess.run([sys.executable, "-m", "optsearch", "study", "c.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (trial,) = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db").trials
    assert trial.user_attrs["final_nice"] == float(os.nice(0))  # the driver's (this test's) own


@pytest.mark.slow
def test_a_study_keeps_going_when_another_process_holds_a_core(ray_cluster, tmp_path):
    """Trainer threads that spin while they wait for each other stall when a core is taken:
    with spinning, these three trials took 26 s here; waiting passively, 8 s."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        doc = digits_config(tmp_path, n_trials=3, pruner={"name": "none"})
        doc["workers"]["count"] = 1  # one worker: both cores' threads in one trainer
        doc["tracking"]["enabled"] = False
        t0 = time.time()
        run_study(load_doc(doc, tmp_path))
        took = time.time() - t0
    finally:
        hog.kill()
        hog.wait()
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/optsearch.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert took < 20, took


FREED_PROBE = r"""
import sys
from optsearch.search.workers import return_freed_memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

if sys.argv[1] == "worker":
    assert return_freed_memory()
big = b"x" * (8 << 20)
del big  # glibc's default: freeing an 8 MiB mmapped block lifts its mmap threshold to 8 MiB
blocks = [b"y" * (2 << 20) for _ in range(50)]  # 100 MiB of 2 MiB blocks, heap or mmap
before = rss_mb()
del blocks[:-1]  # the last one stays in use (with the default, it pins the heap's top)
print(before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_trainer_processes_return_freed_blocks_to_the_system():
    """Known answer from glibc's documented behaviour: with the default dynamic threshold,
    2 MiB blocks freed below a live one stay in the process; with the worker's setting
    they are unmapped at once (about 98 MiB of RSS back)."""
    freed = {mode: float(subprocess.run([sys.executable, "-c", FREED_PROBE, mode], capture_output=True, text=True,
                                        check=True, env={k: v for k, v in os.environ.items()
                                                         if not k.startswith("MALLOC_")}).stdout)
             for mode in ("default", "worker")}
    assert freed["default"] < 10, freed  # the control: glibc keeps them
    assert freed["worker"] > 90, freed
