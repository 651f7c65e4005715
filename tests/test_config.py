"""Config and policy files are validated at start-up with errors that name the problem."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from edge_agent.daemon import build_cascade
from edge_agent.settings import EdgeSettings
from shared.errors import ConfigError
from shared.model_loader import load_model
from shared.onnx_model import resolve_providers
from shared.settings import load_settings
from tests.helpers.bundles import make_softmax_bundle


def test_unknown_setting_is_named(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("bundle_dir: /x\ncloud_targett: 1.2.3.4:5\n")
    with pytest.raises(ConfigError, match="cloud_targett"):
        load_settings(EdgeSettings, path)


def test_bad_value_is_named(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("bundle_dir: /x\nbreaker_failure_threshold: 0\n")
    with pytest.raises(ConfigError, match="breaker_failure_threshold"):
        load_settings(EdgeSettings, path)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(EdgeSettings, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bundle_dir: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(EdgeSettings, bad)


def test_env_settings_apply(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECASCADE_EDGE_BUNDLE_DIR", str(tmp_path))
    monkeypatch.setenv("EDGECASCADE_EDGE_BREAKER_COOLDOWN_S", "7.5")
    settings = load_settings(EdgeSettings)
    assert settings.breaker_cooldown_s == 7.5 and settings.bundle_dir == tmp_path


def test_policy_for_another_model_is_refused_naming_both(tmp_path):
    edge = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0, version=2)
    other = make_softmax_bundle(tmp_path / "other", name="other-model", scale=1.0, version=1)
    with pytest.raises(ConfigError, match="other-model.*toy-edge"):
        build_cascade(EdgeSettings(bundle_dir=edge, policy_file=other / "policy.json", cloud_target=None))
    stale = make_softmax_bundle(tmp_path / "stale", name="toy-edge", scale=1.0, version=1)
    with pytest.raises(ConfigError, match="version 1 but the model is version 2"):
        build_cascade(EdgeSettings(bundle_dir=edge, policy_file=stale / "policy.json", cloud_target=None))


def test_malformed_policy_is_named(tmp_path):
    edge = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    policy = json.loads((edge / "policy.json").read_text())
    policy["signal"] = "vibes"
    (edge / "policy.json").write_text(json.dumps(policy))
    with pytest.raises(ConfigError, match="signal"):
        build_cascade(EdgeSettings(bundle_dir=edge, cloud_target=None))
    policy["signal"], policy["min_threshold"] = "max_prob", 0.99
    (edge / "policy.json").write_text(json.dumps(policy))
    with pytest.raises(ConfigError, match="min_threshold"):
        build_cascade(EdgeSettings(bundle_dir=edge, cloud_target=None))


def test_bad_model_card_and_missing_weights(tmp_path):
    edge = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    (edge / "model.onnx").unlink()
    with pytest.raises(ConfigError, match="model.onnx"):
        load_model(edge)
    card = json.loads((edge / "model.json").read_text())
    card["labels"] = ["only-one"]
    (edge / "model.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="labels"):
        load_model(edge)


def test_corrupt_onnx_file_is_a_config_error(tmp_path):
    edge = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    (edge / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot load ONNX model"):
        build_cascade(EdgeSettings(bundle_dir=edge, cloud_target=None))


def test_missing_providers_fall_back_to_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        chosen = resolve_providers(["tensorrt", "cuda", "cpu"])
    assert chosen[-1] == "CPUExecutionProvider"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "CUDAExecutionProvider is not available" in caplog.text
    with pytest.raises(ConfigError, match="unknown execution provider"):
        resolve_providers(["tpu"])


def test_edge_cli_reports_config_errors_without_a_trace(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edgecascade.cli", "edge", "run", "--bundle-dir", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "model.json not found" in out.stderr and "Traceback" not in out.stderr
