"""Every bad command line ends in one line naming the problem, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cloud_router.settings import RouterSettings
from edge_agent.settings import EdgeSettings
from edgecascade.processes import Daemon
from shared.errors import ConfigError
from shared.settings import load_settings


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecascade.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, cwd=cwd)


def one_line_error(out: subprocess.CompletedProcess, *expected: str) -> str:
    """The run failed with exactly one stderr line holding every `expected` piece."""
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1, out.stderr
    for piece in expected:
        assert piece in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# --- the daemons' listen address ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["edge", "cloud"])
def test_port_in_use_is_named(kind, busy_port, bundles):
    flag = ("--bundle-dir", bundles["edge"]) if kind == "edge" else ("--model-dir", bundles["cloud"])
    out = cli(kind, "run", *flag, "--listen", f"127.0.0.1:{busy_port}")
    assert out.returncode == 2
    one_line_error(out, f"127.0.0.1:{busy_port}", "already in use")


@pytest.mark.parametrize("kind", ["edge", "cloud"])
@pytest.mark.parametrize("listen, problem", [("garbage", "expected host:port"), ("127.0.0.1:99999", "0 to 65535"),
                                             ("::1:50051", "brackets")])
def test_malformed_listen_is_named(kind, listen, problem, bundles):
    flag = ("--bundle-dir", bundles["edge"]) if kind == "edge" else ("--model-dir", bundles["cloud"])
    out = cli(kind, "run", *flag, "--listen", listen)
    one_line_error(out, "--listen", problem)


def test_listen_in_the_config_file_is_checked_at_load(tmp_path):
    path = tmp_path / "cloud.yaml"
    path.write_text("listen: localhost\n")
    with pytest.raises(ConfigError, match="cloud.yaml: setting 'listen': expected host:port"):
        load_settings(RouterSettings, path)
    assert load_settings(RouterSettings, listen="[::1]:0").listen == "[::1]:0"


# --- settings: closest name, the variable named ------------------------------------------------

def test_unknown_setting_suggests_the_closest_name(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("bundle_dir: /x\nbreaker_cooldown: 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'breaker_cooldown'; did you mean 'breaker_cooldown_s'\?"):
        load_settings(EdgeSettings, path)


def test_unknown_environment_variable_suggests_the_closest(monkeypatch):
    monkeypatch.setenv("EDGECASCADE_ROUTER_MAX_BATCH", "8")
    with pytest.raises(ConfigError, match="environment variable EDGECASCADE_ROUTER_MAX_BATCH: .*"
                                          "did you mean EDGECASCADE_ROUTER_MAX_BATCH_SIZE"):
        load_settings(RouterSettings)


@pytest.mark.parametrize("variable, value", [("EDGECASCADE_EDGE_BREAKER_COOLDOWN_S", "soon"),
                                             ("EDGECASCADE_EDGE_PROVIDERS", "[cpu"),
                                             ("EDGECASCADE_EDGE_LISTEN", "50061")])
def test_bad_environment_value_names_the_variable(tmp_path, variable, value):
    out = cli("edge", "run", "--bundle-dir", tmp_path, env={variable: value})
    assert out.returncode == 2
    one_line_error(out, f"environment variable {variable}", repr(value))


def test_bad_value_from_the_file_names_the_file_not_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECASCADE_EDGE_BREAKER_COOLDOWN_S", "1")
    path = tmp_path / "edge.yaml"
    path.write_text("bundle_dir: /x\nbreaker_cooldown_s: -1\n")
    with pytest.raises(ConfigError, match="edge.yaml: setting 'breaker_cooldown_s'"):
        load_settings(EdgeSettings, path)


# --- files the commands write or read ----------------------------------------------------------

UNWRITABLE = Path("/sys/kernel")  # exists, and no one may create files in it, root included


def test_keygen_into_a_missing_directory(tmp_path):
    out = cli("update", "keygen", "--private", tmp_path / "nope" / "k.pem", "--public", tmp_path / "k.pub.pem")
    one_line_error(out, "--private", "does not exist")
    assert not (tmp_path / "k.pub.pem").exists()


@pytest.mark.skipif(not UNWRITABLE.is_dir(), reason="needs Linux sysfs")
def test_keygen_into_an_unwritable_directory(tmp_path):
    out = cli("update", "keygen", "--private", tmp_path / "k.pem", "--public", UNWRITABLE / "k.pub.pem")
    one_line_error(out, "--public", "cannot write in /sys/kernel")
    assert not (tmp_path / "k.pem").exists(), "nothing is written when one of the two cannot be"


@pytest.fixture
def train_csv(tmp_path) -> Path:
    path = tmp_path / "train.csv"
    path.write_text("text,category\nhello,a\nbye,b\n")
    return path


@pytest.mark.skipif(not UNWRITABLE.is_dir(), reason="needs Linux sysfs")
def test_train_into_an_unwritable_directory(train_csv):
    one_line_error(cli("train", "--data", train_csv, "--out", UNWRITABLE / "models"), "--out", "/sys/kernel")


def test_train_into_a_path_below_a_file(train_csv):
    one_line_error(cli("train", "--data", train_csv, "--out", train_csv / "models"), "--out", "cannot create directory")


@pytest.mark.parametrize("kind", ["text", "npy"])
def test_calibrate_refuses_a_file_that_is_not_a_predictions_npz(tmp_path, bundles, kind):
    path = tmp_path / "predictions.npz"
    if kind == "text":
        path.write_text("edge_probs,cloud_pred\n0.9,1\n")
    else:
        with open(path, "wb") as f:
            np.save(f, np.zeros((3, 3), np.float32))
    out = cli("calibrate", "--predictions", path, "--bundle", bundles["edge"])
    assert out.returncode == 2
    one_line_error(out, str(path), "not a predictions .npz")


# --- commands that talk to a router ------------------------------------------------------------

def test_fleet_status_at_an_edge_agent_says_so(tmp_path, bundles):
    with Daemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": None}, tmp_path, name="edge") as edge:
        out = cli("fleet", "status", "--router", edge.target)
        one_line_error(out, edge.target, "that address is an edge agent, not a router")
        out = cli("update", "status", "--router", edge.target)
        one_line_error(out, "that address is an edge agent, not a router")


@pytest.mark.parametrize("canary", ["150", "-1", "nan"])
def test_canary_outside_0_to_100_is_refused_before_anything_is_built(tmp_path, canary):
    # The bundles and key do not exist: had anything been built or read, the error would name them.
    out = cli("update", "push", "--model", tmp_path / "v2", "--base", tmp_path / "v1", "--key", tmp_path / "k.pem",
              "--router", "127.0.0.1:1", "--canary", canary)
    assert out.returncode == 2
    one_line_error(out, "--canary must be from 0 to 100")


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("edgecascade ")


@pytest.mark.parametrize("kind", ["edge", "cloud"])
def test_daemon_help_has_a_description_and_every_option_its_default(kind):
    from edgecascade.cli import build_parser

    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices[kind]._subparsers._group_actions[0].choices["run"]
    assert run.description and "Settings come from" in run.description
    for action in run._actions:
        if action.dest != "help":
            assert "default" in (action.help or ""), f"{kind} run {action.option_strings}: no default in its help"
