"""Bad updates through real daemons: each is refused with its reason, reported to the router,
and the old model keeps serving. The router plays a faulty relay (update_check_uploads off),
so the bytes the agent gets are exactly the broken ones."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest

from edgecascade.processes import InProcessDaemon, free_port
from edgecascade.update_package import package_from_bundles
from shared.delta.golden import make_golden
from shared.delta.package import DeltaPackage, build_package
from tests.helpers.bundles import CONFIDENT, make_softmax_bundle
from tests.helpers.updates import edge_settings, make_keys, publish_package, served_version, toy_versions, wait_state

AGENT = "victim"
SMALL_CHUNK = 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rejections")
    key, public = make_keys(tmp)
    other_key, _ = make_keys(tmp, "intruder")
    bundles = toy_versions(tmp, "toy", (1, 2, 3))
    cloud = make_softmax_bundle(tmp / "cloud", name="toy-cloud", scale=10.0, permute=True)
    metrics_port = free_port()
    with InProcessDaemon("cloud", {"model_dirs": [str(cloud)], "update_check_uploads": False}, tmp, name="router") as router:
        settings = edge_settings(bundles[2], router, tmp / "state", public, AGENT, metrics_port=metrics_port)
        with InProcessDaemon("edge", settings, tmp, name="agent") as agent:
            yield {"router": router, "agent": agent, "bundles": bundles, "key": key, "other_key": other_key,
                   "metrics_port": metrics_port, "tmp": tmp}


def package(world, *, key=None, base=2, target=3, chunk_size=SMALL_CHUNK, **kwargs) -> DeltaPackage:
    b = world["bundles"]
    return package_from_bundles(b[target], b[base], key or world["key"], chunk_size=chunk_size, **kwargs)


def refused(world, pkg: DeltaPackage, reason: str, payload: bytes | None = None):
    """Publish, wait for the agent's `rejected` report, check the reason and that v2 still serves."""
    router, agent = world["router"], world["agent"]
    if payload is not None:
        pkg = DeltaPackage(pkg.signed_manifest, payload)
    update_id = publish_package(router, pkg)
    record = wait_state(router, agent, AGENT, update_id, {"rejected", "healthy", "rolled_back"})
    assert (record.state, record.reason) == ("rejected", reason), record.message
    assert record.active_version == 2
    assert served_version(agent) == 2
    return record


def test_wrong_signing_key(world):
    record = refused(world, package(world, key=world["other_key"]), "bad_signature")
    assert "signature" in record.message


def test_patch_for_a_different_base(world):
    refused(world, package(world, base=1), "wrong_base")


def test_truncated_patch(world):
    pkg = package(world)
    refused(world, pkg, "truncated_patch", payload=pkg.payload[:-3])


def test_corrupted_patch(world):
    pkg = package(world)
    corrupt = bytearray(pkg.payload)
    corrupt[len(corrupt) // 2] ^= 0xFF
    refused(world, pkg, "corrupt_patch", payload=bytes(corrupt))


def test_download_beyond_the_stated_length(world):
    pkg = package(world)
    size = len(pkg.payload)
    pkg = package(world, chunk_size=size - 1)  # a one-byte last chunk, so extra bytes land in it
    refused(world, pkg, "oversized_patch", payload=pkg.payload + b"\0" * 64)


def test_replay_of_an_older_version(world):
    b = world["bundles"]
    old = build_package(b[2] / "model.onnx", b[1] / "model.onnx", model_name="toy", version=1, signing_key=world["key"],
                        expires_in_s=3600, chunk_size=SMALL_CHUNK)
    record = refused(world, old, "stale_version")
    assert "not a signed rollback" in record.message


def test_expired_manifest(world):
    refused(world, package(world, expires_in_s=60, now=time.time() - 120), "expired")


def test_model_failing_its_golden_check(world):
    b = world["bundles"]
    inputs = [np.full(3, float(i), np.float32) for i in range(4)]
    wrong = [np.array([1.0, 0.0, 0.0], np.float32)] * 4  # not what v3 answers
    pkg = build_package(b[2] / "model.onnx", b[3] / "model.onnx", model_name="toy", version=3, signing_key=world["key"],
                        expires_in_s=3600, golden=make_golden(inputs, wrong, atol=1e-4), chunk_size=SMALL_CHUNK)
    refused(world, pkg, "golden_mismatch")
    state = world["tmp"] / "state"
    assert [p.name for p in (state / "versions").iterdir()] == [(state / "current").read_text().strip()]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{world['metrics_port']}/metrics", timeout=5).read().decode()
    assert 'edgecascade_update_state{state="rejected"} 1.0' in metrics
    assert "edgecascade_update_target_version 3.0" in metrics


def test_a_good_update_still_goes_through(world):
    """After all those refusals the agent still takes a sound update."""
    update_id = publish_package(world["router"], package(world))
    record = wait_state(world["router"], world["agent"], AGENT, update_id, {"healthy", "rejected", "rolled_back"})
    assert record.state == "healthy", record.message
    assert served_version(world["agent"], CONFIDENT) == 3
