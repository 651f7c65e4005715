"""The resident apply worker: one child for many applies, restarted after a crash or time-out."""

from __future__ import annotations

import os
import signal
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.delta import ResidentApplyWorker, apply_verified, build_package, file_sha256
from shared.errors import ApplyFailedError, InvalidInputError, WrongBaseError
from tests.helpers.delta import mlp_weights, nudge, write_onnx_mlp

NOW = 1_700_000_000


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def update(tmp_path, key):
    weights = mlp_weights()
    base = write_onnx_mlp(tmp_path / "model.onnx", weights)
    target = write_onnx_mlp(tmp_path / "target.onnx", dict(weights, w1=nudge(weights["w1"])))
    pkg = build_package(base, target, model_name="digits", version=2, signing_key=key, expires_in_s=3600, now=NOW)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(pkg.payload)
    return pkg.manifest, payload, base, target


@pytest.fixture
def worker():
    with ResidentApplyWorker("idle") as w:
        yield w


def test_one_child_applies_many_updates(update, worker, tmp_path):
    manifest, payload, base, target = update
    for n in range(3):
        out = tmp_path / f"out{n}.onnx"
        applied = apply_verified(manifest, payload, base, out, worker=worker)
        assert applied.path == out and file_sha256(out) == file_sha256(target)
    assert worker.started == 1


def test_child_refusal_comes_back_typed_and_the_child_stays(update, worker, tmp_path):
    manifest, payload, base, _ = update
    reply = worker.apply(payload, base, tmp_path / "out", base_sha256="0" * 64, timeout_s=60)
    assert reply["reason"] == "wrong_base"
    pid = worker.pid
    with pytest.raises(WrongBaseError, match="the patch needs"):  # the child's base check, typed in the parent
        apply_verified(manifest.model_copy(update={"base_sha256": "0" * 64}), payload, base, tmp_path / "o2", worker=worker)
    assert worker.pid == pid and worker.started == 1
    assert not (tmp_path / "o2").exists()


def test_child_that_died_while_idle_is_replaced_before_the_next_job(update, worker, tmp_path):
    manifest, payload, base, target = update
    pid = worker.pid
    os.kill(pid, signal.SIGKILL)
    while worker._proc.poll() is None:
        time.sleep(0.01)
    apply_verified(manifest, payload, base, tmp_path / "out", worker=worker)
    assert file_sha256(tmp_path / "out") == file_sha256(target)
    assert worker.started == 2 and worker.pid != pid


def test_job_past_its_time_limit_kills_the_child(update, worker, tmp_path):
    manifest, payload, base, _ = update
    os.kill(worker.pid, signal.SIGSTOP)  # a child that never answers
    with pytest.raises(ApplyFailedError, match="longer than"):
        apply_verified(manifest, payload, base, tmp_path / "out", worker=worker, timeout_s=0.2)
    assert worker.pid is None and not (tmp_path / "out").exists()  # killed and reaped
    apply_verified(manifest, payload, base, tmp_path / "out", worker=worker)  # a fresh child
    assert worker.started == 2


def test_bad_job_line_is_answered_not_fatal(tmp_path):
    import io

    from shared.delta.apply_worker import serve

    out = io.StringIO()
    serve(io.StringIO('not json\n{"payload": "/nonexistent", "base": "/x", "out": "' + str(tmp_path / "o") + '"}\n'), out)
    replies = out.getvalue().splitlines()
    assert len(replies) == 2 and all('"reason": "apply_failed"' in r for r in replies)


def test_close_ends_the_child_and_bad_priority_is_refused():
    w = ResidentApplyWorker("low").start()
    pid = w.pid
    w.close()
    assert w.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(InvalidInputError, match="priority"):
        ResidentApplyWorker("urgent")
