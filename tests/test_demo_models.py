"""The demo model pair: built once per module into a temporary cache (about 10 s), then checked
through the real runtimes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecascade.offline.demo_models import CACHE_ENV, DEMO_FORMAT, demo_dir, ensure_demo_models, load_split
from shared.errors import ConfigError
from shared.model_card import load_card
from shared.model_loader import load_model
from shared.policy import load_policy
from shared.signals import confidence_scores

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def demo(cache_root):
    return ensure_demo_models(cache_root)


@pytest.fixture(scope="module")
def test_probs(demo):
    """(edge probs, cloud probs, labels) on the test split, through load_model."""
    split = demo.test_split()
    edge = load_model(demo.edge_dir, edge=True)
    cloud = load_model(demo.cloud_dir)
    edge.load()
    cloud.load()
    return edge.predict(list(split.X)), cloud.predict(list(split.X)), split.y


def test_cache_layout_and_info(demo, cache_root):
    assert demo.root == cache_root / DEMO_FORMAT
    assert demo.info["format"] == DEMO_FORMAT
    assert demo.info["split"] == {"seed": 7, "train": 997, "calibration": 350, "test": 450}
    assert set(demo.info["files"]) >= {"edge/model.onnx", "edge/policy.json", "cloud/weights.safetensors", "test.npz"}
    assert [p.name for p in cache_root.iterdir()] == [DEMO_FORMAT]  # no build leftovers


def test_splits_are_float32_pixels_with_every_digit(demo):
    test, cal = demo.test_split(), demo.calibration_split()
    np.testing.assert_array_equal(demo.test_inputs, test.X)
    np.testing.assert_array_equal(demo.test_labels, test.y)
    assert test.X.shape == (450, 64) and cal.X.shape == (350, 64)
    for split in (test, cal):
        assert split.X.dtype == np.float32 and 0.0 <= split.X.min() and split.X.max() <= 1.0
        assert sorted(set(split.y.tolist())) == list(range(10))


def test_edge_bundle_is_an_int8_onnx_graph(demo):
    card = load_card(demo.edge_dir)
    assert card.runtime == "onnx" and card.labels == [str(d) for d in range(10)]
    assert card.input.kind == "tensor" and card.input.dtype == "float32" and card.input.shape == [64]
    graph = onnx.load(demo.edge_dir / card.file).graph
    ops = [node.op_type for node in graph.node]
    assert "QLinearMatMul" in ops and "MatMul" not in ops
    assert ops[-1] == "Softmax"
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(np.prod(t.dims) for t in int8_weights) >= 64 * 8
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["probs"]


def test_cloud_bundle_is_a_torch_mlp(demo):
    card = load_card(demo.cloud_dir)
    assert card.runtime == "torch_mlp" and card.file == "weights.safetensors"
    assert card.options["in_features"] == 64 and card.options["hidden"] == [512, 256]
    with pytest.raises(ConfigError, match="edge agents run only 'onnx'"):
        load_model(demo.cloud_dir, edge=True)


def test_accuracies_are_in_the_expected_ranges(demo, test_probs):
    edge_probs, cloud_probs, y = test_probs
    edge_acc = float((edge_probs.argmax(1) == y).mean())
    cloud_acc = float((cloud_probs.argmax(1) == y).mean())
    assert 0.88 <= edge_acc <= 0.97
    assert cloud_acc >= 0.97
    assert cloud_acc - edge_acc >= 0.02
    assert demo.info["accuracy"]["test"]["edge"] == pytest.approx(edge_acc, abs=1e-4)
    assert demo.info["accuracy"]["test"]["cloud"] == pytest.approx(cloud_acc, abs=1e-4)


def test_policy_defers_about_a_quarter_and_the_cascade_beats_edge_only(demo, test_probs):
    edge_probs, cloud_probs, y = test_probs
    policy = load_policy(demo.edge_dir / "policy.json")
    policy.check_matches(load_card(demo.edge_dir))
    assert policy.spec.signal == "max_prob"
    assert 0.0 < policy.spec.min_threshold < policy.spec.threshold < 1.0
    accept = confidence_scores(edge_probs, "max_prob") >= policy.spec.threshold
    assert 0.15 <= 1.0 - accept.mean() <= 0.35
    cascade_acc = float((np.where(accept, edge_probs.argmax(1), cloud_probs.argmax(1)) == y).mean())
    edge_acc = float((edge_probs.argmax(1) == y).mean())
    cloud_acc = float((cloud_probs.argmax(1) == y).mean())
    assert cascade_acc >= edge_acc + 0.02
    assert cascade_acc >= cloud_acc - 0.01
    # full pressure lowers the threshold to min_threshold: fewer deferrals
    assert (confidence_scores(edge_probs, "max_prob") < policy.threshold_at(1.0)).mean() < 1.0 - accept.mean()


def test_edge_answer_does_not_depend_on_the_rest_of_the_batch(demo):
    X = demo.test_split().X[:16]
    edge = load_model(demo.edge_dir, edge=True)
    edge.load()
    together = edge.predict(list(X))
    alone = np.concatenate([edge.predict([x]) for x in X])
    np.testing.assert_array_equal(together, alone)


def test_second_call_reuses_the_cache(demo, cache_root):
    info_mtime_ns = (demo.root / "demo.json").stat().st_mtime_ns
    again = ensure_demo_models(cache_root)
    assert again.root == demo.root and again.info == demo.info
    assert (demo.root / "demo.json").stat().st_mtime_ns == info_mtime_ns


def test_cache_dir_comes_from_the_environment(demo, cache_root, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(cache_root))
    assert demo_dir() == cache_root / DEMO_FORMAT
    assert ensure_demo_models().info["created_unix_s"] == demo.info["created_unix_s"]
    monkeypatch.delenv(CACHE_ENV)
    assert demo_dir() == Path.home() / ".cache" / "edgecascade" / DEMO_FORMAT


def test_an_incomplete_cache_is_an_error_naming_it(tmp_path):
    root = tmp_path / DEMO_FORMAT
    root.mkdir()
    (root / "demo.json").write_text(json.dumps({"format": DEMO_FORMAT}))
    with pytest.raises(ConfigError, match=f"{root}.*incomplete.*delete it"):
        ensure_demo_models(tmp_path)
    (root / "demo.json").write_text("{")
    with pytest.raises(ConfigError, match="unreadable"):
        ensure_demo_models(tmp_path)


def test_load_split_refuses_other_files(tmp_path):
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 4), np.float64), y=np.zeros(3))
    with pytest.raises(ConfigError, match="float32"):
        load_split(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ConfigError, match="arrays X and y"):
        load_split(tmp_path / "other.npz")
    with pytest.raises(ConfigError, match="not found"):
        load_split(tmp_path / "missing.npz")


def test_edge_bundle_and_cache_load_without_torch(demo, cache_root):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        from edgecascade.offline.demo_models import ensure_demo_models
        from shared.model_loader import load_model
        demo = ensure_demo_models({str(cache_root)!r})
        edge = load_model(demo.edge_dir, edge=True)
        edge.load()
        split = demo.test_split()
        accuracy = float((edge.predict(list(split.X)).argmax(1) == split.y).mean())
        print(accuracy, "sklearn" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    accuracy, sklearn_imported = result.stdout.split()
    assert float(accuracy) == pytest.approx(demo.info["accuracy"]["test"]["edge"], abs=1e-4)
    assert sklearn_imported == "False"


def _stderr_until(proc: subprocess.Popen, marker: bytes, timeout_s: float) -> bytes:
    """What the child wrote to stderr up to and including `marker`; fails if it exits first."""
    seen, deadline = b"", time.monotonic() + timeout_s
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} from the child: {seen[-2000:]!r}"
        if select.select([proc.stderr], [], [], remaining)[0]:
            chunk = os.read(proc.stderr.fileno(), 65536)
            assert chunk, f"child exited (rc {proc.wait()}) before {marker!r}: {seen[-2000:]!r}"
            seen += chunk
    return seen


@pytest.mark.parametrize(
    "step, written",
    [("data", ["calibration.npz", "test.npz"]),  # early: before any training
     ("built", ["demo.json", "edge/policy.json", "cloud/weights.safetensors"])],  # late: just before the swap-in
)
def test_interrupted_build_leaves_no_cache(tmp_path, step, written):
    script = ("import logging; logging.basicConfig(level=logging.WARNING); "
              f"from edgecascade.offline.demo_models import ensure_demo_models; ensure_demo_models({str(tmp_path)!r})")
    env = {**os.environ, "EDGECASCADE_TEST_PAUSE_AT": f"demo-{step}"}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        head = _stderr_until(proc, f"TEST PAUSE at demo-{step}".encode(), timeout_s=300)  # generous: busy machine
        (building,) = tmp_path.iterdir()
        assert building.name.startswith(f".{DEMO_FORMAT}.build-")
        assert all((building / name).is_file() for name in written)
        os.kill(proc.pid, signal.SIGINT)
        _, tail = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and b"KeyboardInterrupt" in head + tail
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_that_a_library_swallows_still_ends_the_build():
    """scikit-learn's MLP training catches KeyboardInterrupt and returns early; the build must
    still stop. And a Ctrl-C during the swap-in or the cleanup waits until that is done."""
    script = textwrap.dedent(
        """
        import os, signal
        from edgecascade.offline.demo_models import _CtrlC

        def ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before os.kill returns to Python code

        with _CtrlC() as guard:
            with guard.live():
                try:
                    ctrl_c()
                except KeyboardInterrupt:
                    print("library swallowed it")
                try:
                    guard.check()
                except KeyboardInterrupt:
                    print("check raised")
        try:
            with _CtrlC() as guard:
                ctrl_c()
                print("cleanup went on")
        except KeyboardInterrupt:
            print("raised after cleanup")
        print("default handler back:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["library swallowed it", "check raised", "cleanup went on",
                                          "raised after cleanup", "default handler back: True", ""]


def test_swap_in_replaces_an_old_cache_and_keeps_a_concurrent_winner(tmp_path):
    from edgecascade.offline.demo_models import _swap_in

    root = tmp_path / DEMO_FORMAT
    first, second = tmp_path / ".first", tmp_path / ".second"
    for build, tag in ((first, "first"), (second, "second")):
        build.mkdir()
        (build / "demo.json").write_text(tag)
    _swap_in(first, root, replace=False)
    assert (root / "demo.json").read_text() == "first"
    _swap_in(second, root, replace=False)  # another process won the race: its cache stays
    assert (root / "demo.json").read_text() == "first" and second.exists()
    _swap_in(second, root, replace=True)  # a rebuild: the newer build replaces the old cache
    assert (root / "demo.json").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_FORMAT]


def test_building_without_torch_is_a_clear_error(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        from edgecascade.offline.demo_models import ensure_demo_models
        from shared.errors import ConfigError
        try:
            ensure_demo_models({str(tmp_path)!r})
        except ConfigError as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "needs 'torch'" in result.stdout and "edgecascade[cloud]" in result.stdout
    assert list(tmp_path.iterdir()) == []
