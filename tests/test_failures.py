"""Nothing lost: real processes killed, crashing and hanging trainers, bad values, bad input.

Every study here runs as a user runs it (``python -m optsearch study``, a real local Ray,
SQLite and MLflow stores in a temporary folder); processes are killed with real signals.
Trainers are small user modules written into that folder.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow

TRAINERS = '''
import ctypes, math, os, time

def slow(params, ctx):
    """Four epochs of 0.4 s; writes its process ids so a test can kill them."""
    with open(f"pids-{ctx.trial_number}.txt", "w") as f:
        f.write(f"{os.getpid()} {os.getppid()}")
    lr = params["optimizer"]["lr"]
    for epoch in range(4):
        time.sleep(0.4)
        ctx.report(epoch + 1, {"val_acc": lr * (epoch + 1)})
    return {"val_acc": lr * 4, "test_acc": 0.5}

def misbehaving(params, ctx):
    """Trial 1 segfaults, trial 2 hangs, trial 3 reports NaN, trial 4 returns inf."""
    import torch

    ctx.build(params, torch.nn.Linear(2, 2), steps_per_epoch=1, epochs=2)  # recorded for export
    lr = params["optimizer"]["lr"]
    if ctx.trial_number == 1:
        ctypes.string_at(0)
    if ctx.trial_number == 2:
        time.sleep(3600)
    for epoch in range(2):
        ctx.report(epoch + 1, {"val_acc": float("nan") if ctx.trial_number == 3 else lr})
    return {"val_acc": math.inf if ctx.trial_number == 4 else lr}

def exits(params, ctx):
    """Every trial before the last two kills its own process (a crash, as os._exit does)."""
    if ctx.trial_number in (0, 1):
        os._exit(3)
    return {"val_acc": params["optimizer"]["lr"]}
'''

CONFIG = '''
study: {{name: s, n_trials: {n}, sampler: {{name: random, seed: 3}}, pruner: none{extra}}}
trainer: {{target: "trainers_mod:{fit}"}}
space: {{optimizer: {{adamw: {{lr: {{low: 1.0e-4, high: 1.0, log: true}}}}}}, schedule: constant}}
workers: {{count: {workers}}}
'''


def setup(tmp_path: Path, fit: str, n: int, workers: int = 2, extra: str = "") -> Path:
    (tmp_path / "trainers_mod.py").write_text(TRAINERS)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(n=n, fit=fit, workers=workers, extra=extra))
    return cfg


def optsearch(tmp_path: Path, *args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optsearch", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, **kw)


def trials(tmp_path: Path, name: str = "s") -> list:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optsearch.db").trials


def counted(ts) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts)


def runs(tmp_path: Path, experiment: str = "s") -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def complete_in_store(tmp_path: Path) -> int:
    """COMPLETE trials, read without creating anything (the study may not exist yet)."""
    db = tmp_path / "optsearch.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def wait_for(predicate, timeout: float = 120.0, every: float = 0.3) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError("timed out waiting")


def test_driver_killed_mid_study_resumes_at_once_and_loses_nothing(tmp_path):
    cfg = setup(tmp_path, "slow", n=8)
    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "study", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: complete_in_store(tmp_path) >= 2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver's whole process group, mid-study
    proc.wait()
    t0 = time.time()
    again = optsearch(tmp_path, "study", str(cfg))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is being run by another" not in again.stderr and time.time() - t0 < 90  # the claim lapsed at once
    ts = trials(tmp_path)
    states = [(t.number, t.state.name, t.user_attrs.get("failure"), t.user_attrs.get("retry_of")) for t in ts]
    assert counted(ts) == 8 and all(t.state != TrialState.RUNNING for t in ts), (states, again.stderr[-2000:])
    interrupted = [t for t in ts if t.user_attrs.get("failure") == "interrupted"]
    assert interrupted and all(t.user_attrs["retried"] for t in interrupted)
    for t in interrupted:  # each one's params ran again
        retry = [r for r in ts if r.user_attrs.get("retry_of") == t.number]
        assert len(retry) == 1 and retry[0].params == t.params and retry[0].state == TrialState.COMPLETE
    rs = runs(tmp_path)
    assert rs and all(r.info.status != "RUNNING" for r in rs)
    by_number = {r.data.tags.get("optsearch.trial_number"): r for r in rs}
    assert {str(t.number) for t in ts} <= set(by_number)  # MLflow holds every trial Optuna holds
    assert all(by_number[str(t.number)].info.status == "FAILED" for t in interrupted)


def test_worker_processes_killed_mid_trial_are_replaced_and_their_trials_retried(tmp_path):
    cfg = setup(tmp_path, "slow", n=6)
    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "study", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "pids-0.txt").exists() and (tmp_path / "pids-1.txt").exists())
    trainer0, _ = map(int, (tmp_path / "pids-0.txt").read_text().split())
    _, actor1 = map(int, (tmp_path / "pids-1.txt").read_text().split())
    os.kill(trainer0, signal.SIGKILL)  # trial 0's trainer process
    os.kill(actor1, signal.SIGKILL)  # trial 1's worker actor
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    ts = trials(tmp_path)
    assert counted(ts) == 6 and all(t.state != TrialState.RUNNING for t in ts)
    crash, lost = ts[0], ts[1]
    assert crash.state == TrialState.FAIL and crash.user_attrs["failure"] == "crash"
    assert "killed by signal SIGKILL (9)" in crash.user_attrs["error"]
    assert lost.state == TrialState.FAIL and lost.user_attrs["failure"] == "lost"
    assert "worker lost" in lost.user_attrs["error"]
    for t in (crash, lost):
        retry = [r for r in ts if r.user_attrs.get("retry_of") == t.number]
        assert len(retry) == 1 and retry[0].params == t.params and retry[0].state == TrialState.COMPLETE
    assert "worker 1 lost" in err or "worker 0 lost" in err


def test_a_dead_coordinator_stops_the_study_with_one_line_and_the_next_run_completes_it(tmp_path):
    cfg = setup(tmp_path, "slow", n=6)
    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "study", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: complete_in_store(tmp_path) >= 1)
    ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout.splitlines()
    (pid,) = [int(line.split()[0]) for line in ps if "ray::Coordinator" in line]
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("optsearch: error: study 's': its coordinator died") and "Traceback" not in err
    again = optsearch(tmp_path, "study", str(cfg))
    assert again.returncode == 0, again.stderr[-3000:]
    ts = trials(tmp_path)
    assert counted(ts) == 6 and all(t.state != TrialState.RUNNING for t in ts)
    assert all(r.info.status != "RUNNING" for r in runs(tmp_path))


def test_segfault_hang_nan_and_inf_each_fail_their_trial_and_the_study_completes(tmp_path):
    cfg = setup(tmp_path, "misbehaving", n=6, workers=2, extra=", trial_timeout: 8")
    done = optsearch(tmp_path, "study", str(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    ts = trials(tmp_path)
    by = {t.number: t for t in ts}
    assert by[1].user_attrs["failure"] == "crash" and "SIGSEGV" in by[1].user_attrs["error"]
    assert by[2].user_attrs["failure"] == "timeout" and "trial_timeout (8 s)" in by[2].user_attrs["error"]
    assert by[3].user_attrs["failure"] == "non_finite" and "val_acc is nan at step 1" in by[3].user_attrs["error"]
    assert by[4].user_attrs["failure"] == "non_finite" and "final val_acc is inf" in by[4].user_attrs["error"]
    assert all(by[n].state == TrialState.FAIL for n in (1, 2, 3, 4))
    # the crash is retried and not counted; the hang, the NaN and the inf are the trials' own failures
    assert by[1].user_attrs["retried"] and not any(by[n].user_attrs.get("retried") for n in (2, 3, 4))
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts) + 3 == 6
    best = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optsearch.db").best_trial
    assert best.number not in (3, 4) and best.value < 10  # inf never becomes the best
    exported = optsearch(tmp_path, "export", "s")
    assert exported.returncode == 0 and f"trial: {best.number}" in exported.stdout


def test_nan_pruned_trials_leave_compare_without_nan(tmp_path):
    cfg = setup(tmp_path, "misbehaving", n=5, extra=", nan: prune")
    (tmp_path / "trainers_mod.py").write_text(TRAINERS.replace("if ctx.trial_number == 1:\n        ctypes", "if False:\n        ctypes")
                                              .replace("if ctx.trial_number == 2:\n        time.sleep(3600)", "if False:\n        pass"))
    done = optsearch(tmp_path, "study", str(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    nan_trial = trials(tmp_path)[3]
    assert nan_trial.state == TrialState.PRUNED and list(nan_trial.intermediate_values) == []
    compared = optsearch(tmp_path, "compare", "s")
    assert compared.returncode == 0 and "nan" not in compared.stdout.lower(), compared.stdout


def test_a_single_worker_whose_trials_crash_still_spends_the_whole_budget(tmp_path):
    cfg = setup(tmp_path, "exits", n=4, workers=1)
    done = optsearch(tmp_path, "study", str(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    ts = trials(tmp_path)
    assert counted(ts) == 4
    assert [t.user_attrs.get("failure") for t in ts[:2]] == ["crash", "crash"]
    assert all("exited with code 3" in t.user_attrs["error"] for t in ts[:2])


def test_params_that_crash_every_time_are_given_up_and_said_so(tmp_path):
    (tmp_path / "always.py").write_text("import os\ndef fit(params, ctx):\n    os._exit(4)\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(n=2, fit="x", workers=1, extra=", max_retries: 1")
                   .replace('"trainers_mod:x"', '"always:fit"'))
    done = optsearch(tmp_path, "study", str(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    ts = trials(tmp_path)
    # each point: a first run and one retry, both crash; the second crash is counted
    assert len(ts) == 4 and all(t.state == TrialState.FAIL for t in ts)
    assert [bool(t.user_attrs.get("retried")) for t in ts].count(True) == 2
    assert "given up" in done.stdout + done.stderr


def test_resumed_random_and_tpe_samplers_do_not_replay_their_points(ray_cluster, tmp_path):
    from optsearch.search import config
    from optsearch.search.run import run_study
    from tests.conftest import digits_config

    for sampler in ({"name": "random", "seed": 0}, {"name": "tpe", "seed": 0}):
        doc = digits_config(tmp_path, n_trials=2, sampler=sampler, name=sampler["name"])
        doc["trainer"]["epochs"] = 1
        doc["tracking"]["enabled"] = False
        run_study(config.validate(doc, str(tmp_path / "c.yaml"), tmp_path))
        doc["study"]["n_trials"] = 4
        run_study(config.validate(doc, str(tmp_path / "c.yaml"), tmp_path))
        lrs = [t.params["adamw.lr"] for t in trials(tmp_path, sampler["name"])]
        assert len(lrs) == 4 and len(set(lrs)) == 4, lrs  # a replay would repeat the first two


def test_mlflow_down_the_whole_time_costs_no_trial_and_is_reported(tmp_path):
    cfg = setup(tmp_path, "slow", n=2)
    done = optsearch(tmp_path, "study", str(cfg), "--set", "tracking.uri=http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr[-3000:]
    assert counted(trials(tmp_path)) == 2
    assert "MLflow:" in done.stdout and "could not be made" in done.stdout


def test_mlflow_locked_for_a_while_gets_every_record_when_it_returns(tmp_path):
    cfg = setup(tmp_path, "slow", n=4)
    warm = optsearch(tmp_path, "study", str(cfg), "--set", "study.n_trials=1")  # creates the stores
    assert warm.returncode == 0, warm.stderr[-2000:]
    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=1, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every MLflow write waits, then fails, while this holds
    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "study", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: complete_in_store(tmp_path) >= 3, timeout=180)
    lock.execute("COMMIT")
    lock.close()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    rs = runs(tmp_path)
    numbers = {r.data.tags.get("optsearch.trial_number") for r in rs if "mlflow.parentRunId" in r.data.tags}
    assert numbers == {str(n) for n in range(4)}, (numbers, out[-2000:])
    assert all(r.info.status != "RUNNING" for r in rs)


def test_two_studies_started_at_once_in_a_fresh_folder_both_create_their_stores(tmp_path):
    cfg = setup(tmp_path, "slow", n=1)
    procs = [subprocess.Popen([sys.executable, "-m", "optsearch", "study", str(cfg), "--set", f"study.name=s{i}"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert "tracking:" not in out
    for i in range(2):
        assert counted(trials(tmp_path, f"s{i}")) == 1
        assert len(runs(tmp_path, f"s{i}")) == 2  # the parent and its trial


def test_a_changed_search_space_is_refused_unless_asked(tmp_path):
    cfg = setup(tmp_path, "slow", n=1)
    assert optsearch(tmp_path, "study", str(cfg)).returncode == 0
    changed = ["--set", "study.n_trials=2", "--set", "space.optimizer.adamw.lr={low: 1.0e-3, high: 1.0, log: true}"]
    refused = optsearch(tmp_path, "study", str(cfg), *changed)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "another search space" in refused.stderr and "--set study.name=NEW" in refused.stderr
    assert "optimizer.adamw.lr" in refused.stderr and str(cfg) in refused.stderr
    ok = optsearch(tmp_path, "study", str(cfg), *changed, "--allow-space-change")
    assert ok.returncode == 0, ok.stderr[-2000:]
    kind = ["--set", "study.n_trials=3", "--set", "space.optimizer.adamw.lr={choices: [0.1, 0.2]}"]
    refused = optsearch(tmp_path, "study", str(cfg), *kind, "--allow-space-change")
    assert refused.returncode == 2 and "the kind of ['optimizer.adamw.lr'] changed" in refused.stderr
    assert counted(trials(tmp_path)) == 2


# ---- bad input: one line, exit 2, no traceback, stores untouched --------------------------------

GOOD = """
study: {name: s, n_trials: 1, sampler: {name: random}}
trainer: {name: digits, epochs: 1}
space:
  optimizer: {adamw: {lr: {low: 1.0e-4, high: 1.0e-2, log: true}, beta2: {one_minus: {low: 1.0e-3, high: 0.1, log: true}}}}
"""

BAD_SETS = [
    ("study.n_trials=0", "study.n_trials"),
    ("study.n_trials=2.5", "study.n_trials"),
    ("study.n_trials=many", "study.n_trials"),
    ("study.direction=up", "study.direction"),
    ("study.metric=''", "study.metric"),
    ("study.colour=red", "study.colour"),
    ("study.seed=-1", "study.seed"),
    ("study.nan=ignore", "study.nan"),
    ("study.max_retries=-1", "study.max_retries"),
    ("study.trial_timeout=0", "study.trial_timeout"),
    ("study.sampler.name=grid", "study.sampler.name"),
    ("study.sampler.n_startup_trials=-3", "study.sampler.n_startup_trials"),
    ("study.sampler.gamma=0.1", "study.sampler.gamma"),
    ("study.pruner={name: hyperband, reduction_factor: 1}", "study.pruner.reduction_factor"),
    ("study.pruner={name: percentile}", "study.pruner.percentile"),
    ("study.pruner={name: median, n_min_trials: 0}", "study.pruner.n_min_trials"),
    ("study.storage='not a url'", "study.storage"),
    ("trainer.name=mnist", "trainer.name"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.val_fraction=1.5", "trainer.val_fraction"),
    ("trainer.lr=0.1", "trainer.lr"),
    ("trainer.target=nosuchmodule_xyz:fit", "trainer"),
    ("space.optimizer.adamw.lr={low: 0.1, high: 0.01}", "space.optimizer.adamw.lr"),
    ("space.optimizer.adamw.lr=-0.1", "space.optimizer.adamw.lr"),
    ("space.optimizer.adamw.lr={low: 0, high: 1, log: true}", "space.optimizer.adamw.lr"),
    ("space.optimizer.adamw.lr={low: 0.0, high: 1.0, step: 0.3}", "space.optimizer.adamw.lr"),
    ("space.optimizer.adamw.lr=[0.1, 0.2]", "space.optimizer.adamw.lr"),
    ("space.optimizer.adamw.beta2={one_minus: {low: 0.5, high: 2.0}}", "space.optimizer.adamw.beta2"),
    ("space.optimizer.adamw.momentum=0.9", "space.optimizer.adamw.momentum"),
    ("space.optimizer.lion={}", "space.optimizer"),
    ("space.optimizer.sgd={nesterov: true, momentum: 0.0}", "space.optimizer.sgd.nesterov"),
    ("space.optimizer.sgd={wd_schedule: constant}", "space.optimizer.sgd.wd_schedule"),
    ("space.schedule={cosine: {T_mult: 2}}", "space.schedule.cosine.T_mult"),
    ("space.schedule={sgdr: {T_mult: 1.5}}", "space.schedule.sgdr.T_mult"),
    ("space.schedule={step: {milestones: [0.75, 0.5]}}", "space.schedule.step.milestones"),
    ("space.schedule={step: {milestones: [0.01], warmup_epochs: 1}}", "space.schedule.step.milestones"),
    ("space.schedule={onecycle: {base_momentum: 0.99, max_momentum: 0.9}}", "space.schedule.onecycle.base_momentum"),
    ("space.schedule={cosine: {eta_min: 2.0}}", "space.schedule.cosine.eta_min"),
    ("space.param_groups.layer_decay=0", "space.param_groups.layer_decay"),
    ("space.param_groups.layers=blocks", "space.param_groups.layers"),
    ("space.param_groups.colour=1", "space.param_groups.colour"),
    ("workers.count=0", "workers.count"),
    ("workers.trials_per_gpu=-1", "workers.trials_per_gpu"),
    ("tracking.enabled=maybe", "tracking.enabled"),
    ("tracking.uri=foo://bar", "tracking.uri"),
    ("tracking.uri=sqlite:////proc/optsearch-mlflow.db", "tracking.uri"),  # a folder that cannot be written
    ("extra=1", "extra"),
    ("study.n_trials={a: [}", "--set"),
    ("nokey", "--set"),
]


def _digest(folder: Path) -> dict[str, str]:
    """Every file of the folder by content (the stores and anything next to them)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A folder with a stored study and MLflow store, to prove bad input leaves them byte-identical."""
    folder = tmp_path_factory.mktemp("stored")
    (folder / "c.yaml").write_text(GOOD)
    done = optsearch(folder, "study", "c.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


@pytest.mark.parametrize("override,key", BAD_SETS)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(stored, capsys, monkeypatch, override, key):
    from optsearch.cli import main

    monkeypatch.chdir(stored)
    before = _digest(stored)
    code = main(["study", "c.yaml", "--set", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("optsearch: error: ") and "Traceback" not in err
    assert key in err, err
    if key != "--set":
        assert "c.yaml" in err  # the file is named
    assert _digest(stored) == before


def test_bad_files_and_modules_are_one_line_errors(tmp_path, capsys, monkeypatch):
    from optsearch.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("study: {name: caf\xe9}\n".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken_syntax.py").write_text("def fit(params, ctx)\n    return {}\n")
    (tmp_path / "raises_at_import.py").write_text("raise RuntimeError('no GPU driver')\n")
    (tmp_path / "big.yaml").write_text(GOOD + f"extra: {'x' * 10_000_000}\n")
    cases = [
        (["study", "latin1.yaml"], "not UTF-8"),
        (["study", "folder"], "is a directory"),
        (["study", "quickstart", "--set", "trainer={target: 'broken_syntax:fit'}"], "broken_syntax.py, line 1: SyntaxError"),
        (["study", "quickstart", "--set", "trainer={target: 'raises_at_import:fit'}"],
         "raises_at_import.py: importing it raised RuntimeError: no GPU driver"),
        (["study", "big.yaml"], "... (10000002 characters): unknown top-level key"),
        (["study", "quickstart", "--set", "space.optimizer.adamw.beta2={one_minus: {low: 0.5, high: 2.0}}"],
         "= {'one_minus': {'low': 0.5, 'high': 2.0}}: it gives -1.0, which must be"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, (argv, err[:500])
        assert len(err) < 600


def test_unreachable_storage_and_ray_address_fail_fast_touching_nothing(tmp_path):
    (tmp_path / "c.yaml").write_text(GOOD)
    for extra, needle in ((["--set", "study.storage=postgresql://u@127.0.0.1:1/db"], "cannot open the study"),
                          (["--ray-address", "127.0.0.1:1"], "nothing answers there")):
        t0 = time.time()
        done = optsearch(tmp_path, "study", "c.yaml", *extra, timeout=60)
        assert done.returncode == 2 and time.time() - t0 < 30, done.stderr[-2000:]
        assert done.stderr.count("\n") == 1 and needle in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()
