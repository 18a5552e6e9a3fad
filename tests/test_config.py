"""Config validation: every bad input is one line naming file, key and value; exit code 2."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import yaml

from optsearch.cli import main
from optsearch.errors import ConfigError
from optsearch.search import config

GOOD = """
study: {name: s, n_trials: 3}
trainer: {name: digits, epochs: 2}
space:
  optimizer: {adamw: {lr: {low: 1.0e-4, high: 1.0e-2, log: true}}}
"""


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_config_loads_with_defaults(tmp_path):
    cfg = config.load(str(write(tmp_path, GOOD)), cwd=tmp_path)
    assert cfg.study.name == "s" and cfg.study.n_trials == 3
    assert cfg.study.sampler.name == "tpe" and cfg.study.pruner.name == "median"
    assert cfg.study.storage == f"sqlite:///{tmp_path}/optsearch.db"  # made absolute for Ray workers
    assert cfg.trainer.options == {"epochs": 2}
    assert list(cfg.space.optimizer.options) == ["adamw"]


def test_set_overrides_any_key(tmp_path):
    p = write(tmp_path, GOOD)
    cfg = config.load(str(p), ["study.n_trials=9", "study.pruner.name=hyperband", "trainer.epochs=3",
                               "space.optimizer.adamw.beta1=0.8"], cwd=tmp_path)
    assert cfg.study.n_trials == 9 and cfg.study.pruner.name == "hyperband"
    assert cfg.trainer.options["epochs"] == 3
    assert cfg.space.optimizer.options["adamw"]["beta1"].value == 0.8


def test_bundled_config_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.load("quickstart.yaml").study.name == "quickstart"
    assert config.load("configs/quickstart.yaml").study.name == "quickstart"
    assert config.load("quickstart").trainer.name == "digits"


BAD = [
    # (yaml edit as --set, key in message, value in message)
    ("study.n_trials=-1", "study.n_trials", "-1"),
    ("study.n_trials=many", "study.n_trials", "'many'"),
    ("study.direction=up", "study.direction", "'up'"),
    ("study.colour=red", "study.colour", "'red'"),
    ("study.sampler.name=grid", "study.sampler.name", "'grid'"),
    ("study.pruner.reduction_factor=3", "study.pruner.reduction_factor", "3"),
    ("study.pruner={name: hyperband, reduction_factor: 1}", "study.pruner.reduction_factor", "1"),
    ("trainer.name=mnist", "trainer.name", "'mnist'"),
    ("trainer.epochs=0", "trainer.epochs", "0"),
    ("trainer.lr=0.1", "trainer.lr", "0.1"),
    ("trainer.target=nosuchmodule_xyz:fit", "trainer", ""),
    ("space.optimizer.adamw.lr={low: 0.1, high: 0.01}", "space.optimizer.adamw.lr", "'low': 0.1"),
    ("space.optimizer.adamw.lr=-0.1", "space.optimizer.adamw.lr", "-0.1"),
    ("space.optimizer.adamw.lr={low: 0, high: 1, log: true}", "space.optimizer.adamw.lr", "'low': 0"),
    ("space.optimizer.adamw.momentum=0.9", "space.optimizer.adamw.momentum", "0.9"),
    ("space.optimizer.lion={}", "space.optimizer", "'lion'"),
    ("space.schedule.cosine.T_mult=2", "space.schedule.cosine.T_mult", "2"),
    ("workers.count=0", "workers.count", "0"),
    ("tracking.enabled=maybe", "tracking.enabled", "'maybe'"),
    ("extra=1", "extra", "1"),
    ("study.storage=not a url", "study.storage", "'not a url'"),
    ("tracking.uri=foo://bar", "tracking.uri", "'foo://bar'"),
]


@pytest.mark.parametrize("override,key,value", BAD)
def test_bad_input_names_file_key_value(tmp_path, override, key, value):
    p = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as info:
        config.load(str(p), [override], cwd=tmp_path)
    message = str(info.value)
    assert message.startswith(f"{p}: ")
    assert key in message and value in message
    assert "\n" not in message


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    p = write(tmp_path, GOOD)
    assert main(["study", str(p), "--set", "study.n_trials=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"optsearch: error: {p}: study.n_trials = 0: must be an integer >= 1"


@pytest.mark.parametrize("argv,needle", [
    (["study", "no-such-config.yaml"], "no-such-config.yaml: no such config file"),
    (["study", "{bad}", "--set", "nodot"], "no such config file"),
    (["study", "quickstart.yaml", "--set", "nodot"], "--set = 'nodot': must look like a.b.c=value"),
    (["study", "quickstart.yaml", "--set", "study.n_trials.x=1"], "study.n_trials is not a mapping"),
    (["study", "quickstart.yaml", "--workers", "0"], "--workers = 0"),
    (["nosuchcommand"], "invalid choice"),
])
def test_cli_errors(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if argv == ["nosuchcommand"] else contextlib.nullcontext():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_config_error_survives_pickling():  # Ray carries it from workers to the driver
    import pickle

    err = pickle.loads(pickle.dumps(ConfigError("trainer.root", "/x", "missing", file="c.yaml")))
    assert str(err) == "c.yaml: trainer.root = '/x': missing"


def test_invalid_yaml_is_one_line(tmp_path, capsys):
    p = write(tmp_path, "study: {name: [unclosed\n")
    assert main(["study", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "invalid YAML at line" in err and err.count("\n") == 1


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    p = write(tmp_path, GOOD.replace("n_trials: 3", "n_trials: 3, direction: sideways"))
    proc = subprocess.run([sys.executable, "-m", "optsearch", "study", str(p)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"optsearch: error: {p}: study.direction = 'sideways': "
                                   "must be one of ['maximize', 'minimize']")


def test_bad_input_does_not_touch_stores(tmp_path):
    p = write(tmp_path, GOOD)
    assert main(["study", str(p), "--set", "study.n_trials=0"]) == 2
    assert not (tmp_path / "optsearch.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_dry_run_prints_the_resolved_document(tmp_path, capsys):
    p = write(tmp_path, GOOD)
    assert main(["study", str(p), "--dry-run", "--set", "study.n_trials=5"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["study"]["n_trials"] == 5
