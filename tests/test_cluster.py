"""Beyond one machine: a real multi-node Ray cluster on this machine, shipped trainer code,
and a real PostgreSQL server as the study storage."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow

NODE_TRAINER = '''
import json, os, time


def fit(params, ctx):
    """Sleeps through 4 epochs; writes which file it was imported from."""
    import torch

    ctx.build(params, torch.nn.Linear(2, 2), steps_per_epoch=1, epochs=4)  # recorded, for export
    out = ctx.options["log_dir"]
    with open(os.path.join(out, f"trial-{ctx.trial_number}.json"), "w") as f:
        json.dump({"file": __file__}, f)
    lr = params["optimizer"]["lr"]
    for epoch in range(4):
        time.sleep(ctx.options.get("sleep", 0.5))
        ctx.report(epoch + 1, {"val_acc": lr * (epoch + 1)})
    return {"val_acc": lr * 4}
'''

CONFIG = """
study: {{name: c, n_trials: {n}, sampler: {{name: random, seed: 0}}, pruner: none{storage}}}
trainer: {{target: "node_trainer:fit", log_dir: "{log_dir}", sleep: {sleep}}}
space: {{optimizer: {{adamw: {{lr: {{low: 1.0e-4, high: 1.0, log: true}}}}}}, schedule: constant}}
"""


def project(tmp_path: Path, n: int, sleep: float = 0.5, storage: str = "") -> tuple[Path, Path]:
    """A user's project folder (config + trainer module) and a log folder outside it."""
    proj, logs = tmp_path / "project", tmp_path / "logs"
    proj.mkdir()
    logs.mkdir()
    (proj / "node_trainer.py").write_text(NODE_TRAINER)
    extra = f", storage: '{storage}'" if storage else ""
    (proj / "c.yaml").write_text(CONFIG.format(n=n, log_dir=logs, sleep=sleep, storage=extra))
    return proj, logs


@pytest.fixture
def two_nodes():
    """A Ray cluster of two nodes on this machine, one CPU each (the head and a worker node)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, node
    cluster.shutdown()


def seen(logs: Path) -> dict[int, dict]:
    """What each trial wrote (files still being written are skipped)."""
    out = {}
    for p in logs.glob("trial-*.json"):
        try:
            out[int(p.stem.split("-")[1])] = json.loads(p.read_text())
        except ValueError:
            continue
    return out


def test_a_study_spreads_over_two_nodes_and_ships_the_trainer(two_nodes, tmp_path):
    cluster, node = two_nodes
    proj, logs = project(tmp_path, n=6)
    done = subprocess.run([sys.executable, "-m", "optsearch", "study", "c.yaml", "--workers", "2",
                           "--ray-address", cluster.address], cwd=proj, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="c", storage=f"sqlite:///{proj}/optsearch.db").trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6
    nodes = {t.user_attrs["node"].split("(")[1].rstrip(")") for t in trials}
    assert len(nodes) == 2  # recorded per trial: both nodes ran trials
    for info in seen(logs).values():  # imported from the copy Ray shipped, not from the project folder
        assert not info["file"].startswith(str(proj)) and "runtime_resources" in info["file"], info["file"]


def test_a_node_removed_mid_study_loses_nothing(two_nodes, tmp_path):
    cluster, node = two_nodes
    proj, logs = project(tmp_path, n=6, sleep=0.8)
    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "study", "c.yaml", "--workers", "2",
                             "--ray-address", cluster.address], cwd=proj, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    db = proj / "optsearch.db"

    def on_node() -> int:  # trials the worker node finished (each records its node)
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                rows = conn.execute("select value_json from trial_user_attributes where key = 'node'").fetchall()
        except sqlite3.Error:
            return 0
        return sum(node.node_id[:8] in value for (value,) in rows)

    deadline = time.time() + 180
    while time.time() < deadline and on_node() == 0:
        time.sleep(0.2)
    assert on_node() > 0, "no trial ran on the worker node"
    time.sleep(1.0)  # the node's worker is into its next trial
    cluster.remove_node(node)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="c", storage=f"sqlite:///{proj}/optsearch.db").trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6
    lost = [t for t in trials if t.user_attrs.get("failure") == "lost"]
    assert lost and all(t.user_attrs["retried"] for t in lost)
    for t in lost:
        retry = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == t.params
    assert "worker" in err and "lost" in err


# ---- PostgreSQL ----------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which("initdb") else [])
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server in a temporary folder (initdb + pg_ctl), and a database URL."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's binaries (initdb, pg_ctl) are not installed; .ci/run installs them")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (pip install optsearch[postgresql])")
    home = Path(tempfile.mkdtemp(prefix="optsearch-pg-"))  # not under pytest's root-only folders
    data = home / "data"
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        as_user = ["runuser", "-u", "postgres", "--"]
        home.chmod(0o777)
    port = _free_port()
    subprocess.run(as_user + [str(bin_dir / "initdb"), "-D", str(data), "-U", "optsearch", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", f"-p {port} -k {data} -h 127.0.0.1",
                              "-l", str(data / "log.txt"), "-w", "start"], check=True, capture_output=True)
    subprocess.run(as_user + [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "optsearch",
                              "studies"], check=True, capture_output=True)
    yield f"postgresql://optsearch@127.0.0.1:{port}/studies"
    subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def test_a_postgresql_storage_runs_resumes_exports_compares_and_serves_the_dashboard(postgres, tmp_path):
    proj, _ = project(tmp_path, n=3, sleep=0.05, storage=postgres)

    def optsearch(*args):
        return subprocess.run([sys.executable, "-m", "optsearch", *args], cwd=proj, capture_output=True, text=True,
                              timeout=300)

    first = optsearch("study", "c.yaml")
    assert first.returncode == 0, first.stderr[-3000:]
    again = optsearch("study", "c.yaml", "--set", "study.n_trials=5")  # resume, on the server
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="c", storage=postgres).trials
    assert [t.number for t in trials] == list(range(5)) and all(t.state == TrialState.COMPLETE for t in trials)
    assert not (proj / "optsearch.db").exists()
    exported = optsearch("export", "c", "--storage", postgres, "--format", "json")
    assert exported.returncode == 0 and json.loads(exported.stdout)["study"] == "c", exported.stderr
    compared = optsearch("compare", "c", "--storage", postgres)
    assert compared.returncode == 0 and "adamw" in compared.stdout, compared.stderr
    port = _free_port()  # optuna-dashboard, as its docs say: `optuna-dashboard <storage URL>`
    dash = subprocess.Popen(["optuna-dashboard", postgres, "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    def get(path: str):
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                    return json.load(reply)
            except OSError:
                time.sleep(0.5)
        raise AssertionError("optuna-dashboard did not answer")

    try:
        (summary,) = [s for s in get("/api/studies")["study_summaries"] if s["study_name"] == "c"]
        detail = get(f"/api/studies/{summary['study_id']}?after=0")
        assert detail["objective_names"] == ["val_acc"]  # named, not "Objective 0"
        assert not [a for a in detail["user_attrs"] if a["key"].startswith("optsearch.")]  # bookkeeping kept out
        assert len(detail["trials"]) == 5
    finally:
        dash.terminate()
        dash.wait(timeout=30)
