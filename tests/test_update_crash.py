"""Crash safety: the agent (and any apply child) is SIGKILLed at each update step, held there
by the test-only EDGECASCADE_TEST_PAUSE_AT hook. After a restart it serves the old or the new
model whole, never a partial file, and it resumes the update to the end."""

from __future__ import annotations

import pytest

from edge_agent.updater import PAUSE_ENV
from edge_agent.version_store import CURRENT
from edgecascade.processes import Daemon
from edgecascade.update_package import package_from_bundles
from shared.delta.package import file_sha256
from tests.helpers.updates import crash, edge_settings, publish_package, served_version, toy_versions, wait_log, wait_state

#: step -> (version served right after the restart, what the restarted agent logs as it resumes)
STEPS = {
    "download": (1, "resuming the download of update"),
    "apply": (1, ""),
    "install": (1, "is already installed"),
    "swap": (2, "resuming its health window"),
}


@pytest.fixture
def world(update_world):
    return update_world


@pytest.mark.parametrize("step", list(STEPS))
def test_killed_during_an_update_serves_a_whole_model_and_finishes(world, step):
    router, tmp = world["router"], world["tmp"] / step
    name, agent_id = f"toy-{step}", f"agent-{step}"
    bundles = toy_versions(tmp, name, (1, 2))
    state = tmp / "state"
    settings = edge_settings(bundles[1], router, state, world["public"], agent_id)
    pkg = package_from_bundles(bundles[2], bundles[1], world["key"], chunk_size=32)

    agent = Daemon("edge", settings, tmp, name="agent", env={PAUSE_ENV: step}).start()
    try:
        update_id = publish_package(router, pkg)
        wait_log(agent, f"TEST PAUSE at {step}")
        assert served_version(agent) == (2 if step == "swap" else 1)
    finally:
        crash(agent)

    if step == "download":
        assert (state / "downloads" / f"{update_id}.part").stat().st_size > 0
    if step == "apply":
        assert any((state / "staging").iterdir())  # the unchecked output lies in staging
    expected_version, resume_line = STEPS[step]
    current = state / "versions" / (state / CURRENT).read_text().strip()  # whole: old or new, never partial
    assert file_sha256(current / "model.onnx") == file_sha256(bundles[expected_version] / "model.onnx")

    restarted = Daemon("edge", settings, tmp, name="agent-restarted")
    with restarted:
        assert f"serving {name} v{expected_version} " in restarted.logs()
        record = wait_state(router, restarted, agent_id, update_id, {"healthy", "rejected", "rolled_back"})
        assert record.state == "healthy", record.message
        assert served_version(restarted) == 2
        if resume_line:
            assert resume_line in restarted.logs()
