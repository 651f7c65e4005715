"""Cloud runtimes: torch_mlp (real torch, real safetensors files) and sleep."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cloud_router.model_runtimes import load_cloud_model
from cloud_router.sleep_model import SleepModel, hashed_label, write_sleep_bundle
from cloud_router.torch_mlp import MLP, TorchMLPModel, save_mlp_bundle
from shared.errors import ConfigError
from shared.model_card import InputSpec, load_card
from shared.model_loader import load_model

REPO = Path(__file__).resolve().parents[1]
LABELS = ["a", "b", "c"]


def _mlp_bundle(tmp_path: Path, hidden=(16, 8), in_features=5) -> tuple[Path, MLP]:
    torch.manual_seed(0)
    net = MLP(in_features, hidden, len(LABELS))
    return save_mlp_bundle(tmp_path / "mlp", net, name="mlp", version=3, labels=LABELS), net


def _edit_card(bundle: Path, **changes) -> None:
    path = bundle / "model.json"
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


# --- torch_mlp ---------------------------------------------------------------------------


def test_torch_mlp_predicts_softmax_of_the_saved_net(tmp_path):
    bundle, net = _mlp_bundle(tmp_path)
    model = load_model(bundle)
    assert isinstance(model, TorchMLPModel) and not model.ready
    model.load()
    assert model.ready and model.version == 3 and model.labels == LABELS
    inputs = [np.random.default_rng(i).standard_normal(5).astype(np.float32) for i in range(4)]
    probs = model.predict(inputs)
    assert probs.dtype == np.float32 and probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(np.stack(inputs))), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_torch_mlp_card_records_layer_sizes_and_threads(tmp_path):
    bundle, _ = _mlp_bundle(tmp_path)
    card = load_card(bundle)
    assert card.runtime == "torch_mlp" and card.file == "weights.safetensors"
    assert card.options == {"in_features": 5, "hidden": [16, 8], "threads": 1}
    assert card.input.shape == [5]


def test_torch_mlp_sets_torch_threads_from_the_card(tmp_path):
    bundle, _ = _mlp_bundle(tmp_path)
    _edit_card(bundle, options={"in_features": 5, "hidden": [16, 8], "threads": 2})
    before = torch.get_num_threads()
    try:
        load_model(bundle).load()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_torch_mlp_refuses_weights_that_do_not_match_the_card(tmp_path):
    bundle, _ = _mlp_bundle(tmp_path)
    _edit_card(bundle, options={"in_features": 5, "hidden": [32, 8]})
    with pytest.raises(ConfigError, match="layers.0.weight.*shape"):
        load_model(bundle).load()
    _edit_card(bundle, options={"in_features": 5, "hidden": [16]})
    with pytest.raises(ConfigError, match="unexpected"):
        load_model(bundle).load()


def test_torch_mlp_refuses_a_corrupt_weights_file(tmp_path):
    bundle, _ = _mlp_bundle(tmp_path)
    (bundle / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read weights"):
        load_model(bundle).load()


def test_torch_mlp_refuses_bad_options_naming_the_field(tmp_path):
    bundle, _ = _mlp_bundle(tmp_path)
    _edit_card(bundle, options={"in_features": 5, "hidden": [16, 8], "threads": 0})
    with pytest.raises(ConfigError, match="'threads'"):
        load_model(bundle)
    _edit_card(bundle, options={"in_features": 5, "hiden": [16, 8]})
    with pytest.raises(ConfigError, match="'hiden'"):
        load_model(bundle)
    _edit_card(bundle, options={"in_features": 6, "hidden": [16, 8]})
    with pytest.raises(ConfigError, match=r"shape \[6\]"):
        load_model(bundle)


def test_torch_mlp_refuses_text_input(tmp_path):
    bundle, _ = _mlp_bundle(tmp_path)
    _edit_card(bundle, input={"kind": "text"})
    with pytest.raises(ConfigError, match="float32 tensors"):
        load_model(bundle)


def test_torch_mlp_with_no_hidden_layer_is_a_linear_classifier(tmp_path):
    net = MLP(4, [], 3)
    bundle = save_mlp_bundle(tmp_path / "linear", net, name="linear", version=1, labels=LABELS)
    tensors = {"layers.0.weight": torch.zeros(3, 4), "layers.0.bias": torch.tensor([0.0, 1.0, 0.0])}
    save_file(tensors, str(bundle / "weights.safetensors"))
    model = load_model(bundle)
    model.load()
    probs = model.predict([np.ones(4, np.float32)])
    assert probs.argmax() == 1


# --- sleep -------------------------------------------------------------------------------


def test_sleep_model_answers_a_stable_hash_of_each_input(tmp_path):
    bundle = write_sleep_bundle(tmp_path / "sleep", batch_service_ms=0)
    model = load_model(bundle)
    assert isinstance(model, SleepModel)
    model.load()
    inputs = [np.full(64, i, np.float32) for i in range(20)]
    probs = model.predict(inputs)
    assert probs.dtype == np.float32 and probs.shape == (20, 10)
    np.testing.assert_array_equal(probs.sum(axis=1), 1.0)
    assert list(probs.argmax(axis=1)) == [hashed_label(x, 10) for x in inputs]
    assert len(set(probs.argmax(axis=1))) > 1
    # the same input gets the same answer alone, in another batch, from another instance
    again = load_model(bundle)
    again.load()
    np.testing.assert_array_equal(again.predict([inputs[7]])[0], probs[7])


def test_sleep_model_answers_text_and_spreads_the_rest_of_the_confidence(tmp_path):
    bundle = write_sleep_bundle(
        tmp_path / "sleep", labels=["x", "y", "z", "w"], input_spec=InputSpec(kind="text"), batch_service_ms=0, confidence=0.7
    )
    model = load_model(bundle)
    model.load()
    probs = model.predict(["hello", "world"])
    assert probs.max(axis=1).tolist() == pytest.approx([0.7, 0.7])
    assert np.sort(probs[0])[:3].tolist() == pytest.approx([0.1, 0.1, 0.1])
    assert probs[0].argmax() == hashed_label("hello", 4)


def test_sleep_model_takes_at_least_its_service_time(tmp_path):
    bundle = write_sleep_bundle(tmp_path / "sleep", batch_service_ms=30, per_item_ms=5)
    model = load_model(bundle)
    model.load()
    started = time.perf_counter()
    model.predict([np.zeros(64, np.float32)] * 4)
    assert time.perf_counter() - started >= (30 + 4 * 5) / 1000


def test_sleep_model_refuses_bad_options(tmp_path):
    bundle = write_sleep_bundle(tmp_path / "sleep")
    _edit_card(bundle, options={"batch_service_ms": -1})
    with pytest.raises(ConfigError, match="'batch_service_ms'"):
        load_model(bundle)
    _edit_card(bundle, options={"batch_ms": 5})
    with pytest.raises(ConfigError, match="'batch_ms'"):
        load_model(bundle)
    _edit_card(bundle, options={"confidence": 0.05})
    with pytest.raises(ConfigError, match="'confidence'"):
        load_model(bundle)


def test_sleep_runtime_loads_without_torch(tmp_path):
    bundle = write_sleep_bundle(tmp_path / "sleep", batch_service_ms=1)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        import cloud_router  # registers the cloud runtimes
        from shared.model_loader import load_model
        model = load_model({str(bundle)!r})
        model.load()
        print(model.predict([np.zeros(64, np.float32)]).shape)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 10)"


def test_load_cloud_model_dispatches_onnx_too(tmp_path):
    import onnx

    from edgecascade.offline.onnx_mlp import mlp_onnx_graph

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((4, 3)).astype(np.float32)]
    biases = [np.zeros(3, np.float32)]
    bundle = tmp_path / "onnx"
    bundle.mkdir()
    onnx.save(mlp_onnx_graph(weights, biases), bundle / "model.onnx")
    (bundle / "model.json").write_text(
        json.dumps({"name": "o", "version": 1, "labels": LABELS, "input": {"kind": "tensor", "shape": [4]}, "runtime": "onnx"})
    )
    model = load_cloud_model(bundle)
    model.load()
    x = np.ones(4, np.float32)
    np.testing.assert_allclose(model.predict([x])[0], torch.softmax(torch.from_numpy(x @ weights[0]), 0).numpy(), atol=1e-6)
