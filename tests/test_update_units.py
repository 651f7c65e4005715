"""The update pieces without daemons: the router's store and canary rules, the agent's version
store and crash recovery, settings."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from cloud_router.rollout import FULL, HALTED, canary_bucket
from cloud_router.updates import UpdateService
from edge_agent.settings import EdgeSettings
from edge_agent.update_link import UpdateLink
from edge_agent.version_store import CURRENT, VersionStore
from edgecascade.update_package import package_from_bundles
from protos import edgecascade_pb2 as pb
from shared.errors import ConfigError, ExpiredUpdateError, InvalidInputError, TruncatedPatchError, UpdateNotFoundError
from shared.model_card import load_card
from shared.settings import load_settings
from tests.helpers.bundles import make_softmax_bundle
from tests.helpers.updates import make_keys, toy_versions


@pytest.fixture
def toy(tmp_path):
    key, public = make_keys(tmp_path)
    bundles = toy_versions(tmp_path, "toy", (1, 2))
    return {"key": key, "public": public, "bundles": bundles,
            "package": package_from_bundles(bundles[2], bundles[1], key, chunk_size=32)}


def test_router_checks_uploads(toy):
    service = UpdateService(public_key_path=toy["public"])
    pkg = toy["package"]
    with pytest.raises(TruncatedPatchError):
        service.publish(pkg.signed_manifest, pkg.payload[:-1], 0)
    with pytest.raises(InvalidInputError, match="canary_percent"):
        service.publish(pkg.signed_manifest, pkg.payload, 120)
    b = toy["bundles"]
    expired = package_from_bundles(b[2], b[1], toy["key"], expires_in_s=10, now=time.time() - 60)
    with pytest.raises(ExpiredUpdateError):
        service.publish(expired.signed_manifest, expired.payload, 0)
    update = service.publish(pkg.signed_manifest, pkg.payload, 0)
    assert b"".join(service.chunk(update.update_id, i) for i in range(update.manifest.chunk_count)) == pkg.payload
    with pytest.raises(UpdateNotFoundError):
        service.chunk("0" * 16, 0)
    with pytest.raises(InvalidInputError):
        service.chunk(update.update_id, update.manifest.chunk_count)


def test_notices_go_to_agents_on_other_versions_until_they_refuse(toy):
    service = UpdateService()
    update = service.publish(toy["package"].signed_manifest, toy["package"].payload, 0)
    assert service.notice("a", "toy", 1).update_id == update.update_id
    assert service.notice("b", "toy", 2) is None           # already on the target version
    assert service.notice("c", "other", 1) is None         # another model
    service.report("a", model_name="toy", update_id=update.update_id, version=2, state="rejected", reason="wrong_base")
    assert service.notice("a", "toy", 1) is None           # never offered again
    with pytest.raises(InvalidInputError, match="unknown update state"):
        service.report("a", model_name="toy", update_id=update.update_id, version=2, state="fine")


def test_canary_wave_then_the_rest(toy):
    service = UpdateService()
    agents = [f"agent-{i}" for i in range(6)]
    for agent in agents:  # the fleet is known before the publish
        assert service.notice(agent, "toy", 1) is None
    update = service.publish(toy["package"].signed_manifest, toy["package"].payload, 30)
    offered = {a for a in agents if service.notice(a, "toy", 1)}
    expected = {a for a in agents if canary_bucket(update.update_id, a) < 30} or {
        min(agents, key=lambda a: canary_bucket(update.update_id, a))}
    assert offered == expected
    for agent in offered:
        assert service.rollouts["toy"].phase != FULL
        service.report(agent, model_name="toy", update_id=update.update_id, version=2, state="healthy", active_version=2)
    assert service.rollouts["toy"].phase == FULL
    assert {a for a in agents if service.notice(a, "toy", 2 if a in offered else 1)} == set(agents) - offered


def test_a_failing_canary_halts_the_rollout(toy):
    service = UpdateService()
    for agent in ("a", "b", "c"):
        service.notice(agent, "toy", 1)
    update = service.publish(toy["package"].signed_manifest, toy["package"].payload, 1)
    (canary,) = [a for a in ("a", "b", "c") if service.notice(a, "toy", 1)]
    service.report(canary, model_name="toy", update_id=update.update_id, version=2, state="rolled_back",
                   reason="health_window")
    assert service.rollouts["toy"].phase == HALTED
    assert not any(service.notice(a, "toy", 1) for a in ("a", "b", "c"))
    rollouts, records = service.status("toy")
    assert rollouts[0].phase == HALTED and {r.agent_id for r in records} == {"a", "b", "c"}


def test_a_late_or_repeated_report_never_moves_the_record_back(toy):
    service = UpdateService()
    for agent in ("a", "b"):
        service.notice(agent, "toy", 1)
    update = service.publish(toy["package"].signed_manifest, toy["package"].payload, 0)

    def report(agent, state, active_version=1, **kwargs):
        service.report(agent, model_name="toy", update_id=update.update_id, version=2, state=state,
                       active_version=active_version, **kwargs)
        record = service.agents[agent]
        return record.state, record.active_version

    assert report("a", "downloading") == ("downloading", 1)
    assert report("a", "active", active_version=2) == ("active", 2)
    assert report("a", "verified") == ("active", 2)          # an older step, late: ignored
    assert report("a", "active", active_version=2) == ("active", 2)  # the same one again
    assert report("a", "healthy", active_version=2) == ("healthy", 2)
    assert report("a", "active", active_version=2) == ("healthy", 2)
    assert report("b", "rejected", reason="wrong_base") == ("rejected", 1)
    for later in ("downloading", "healthy", "rolled_back"):  # nothing follows a final state
        assert report("b", later, active_version=2) == ("rejected", 1)
    assert service.agents["b"].reason == "wrong_base"
    # a report of another update (a newer publish) starts that update's record afresh
    service.report("b", model_name="toy", update_id="0" * 16, version=3, state="downloading")
    assert (service.agents["b"].update_id, service.agents["b"].state) == ("0" * 16, "downloading")


@pytest.mark.parametrize("polled_version, state, phase", [(2, "healthy", FULL), (1, "rolled_back", HALTED)])
def test_a_poll_after_active_tells_the_router_how_the_health_window_ended(toy, polled_version, state, phase):
    service = UpdateService()
    for agent in ("a", "b", "c"):
        service.notice(agent, "toy", 1)
    update = service.publish(toy["package"].signed_manifest, toy["package"].payload, 1)
    (canary,) = [a for a in ("a", "b", "c") if service.notice(a, "toy", 1)]
    service.report(canary, model_name="toy", update_id=update.update_id, version=2, state="active", active_version=2)
    # its report of how the window ended is lost (the agent restarted); it polls again
    assert service.notice(canary, "toy", polled_version) is None
    record = service.agents[canary]
    assert (record.state, service.rollouts["toy"].phase) == (state, phase)
    assert f"poll on v{polled_version}" in record.message
    others_offered = [a for a in ("a", "b", "c") if a != canary and service.notice(a, "toy", 1)]
    assert len(others_offered) == (2 if state == "healthy" else 0)


def test_an_unsent_report_is_kept_and_never_replaced_by_an_older_step():
    with socket.socket() as sock:  # a port nobody listens on: every report fails
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"

    async def main():
        link = UpdateLink(target, agent_id="a", max_message_bytes=1 << 20, timeout_s=5)
        kept = []
        for update_id, state in (("u1", "active"), ("u1", "healthy"), ("u1", "active"), ("u1", "verified"),
                                 ("u2", "downloading")):
            assert not await link.report(model_name="toy", update_id=update_id, version=2, state=state)
            kept.append((link.pending_report.update_id, link.pending_report.state))
        assert not await link.resend_report()
        kept.append((link.pending_report.update_id, link.pending_report.state))
        await link.close()
        return kept

    assert asyncio.run(main()) == [("u1", "active"), ("u1", "healthy"), ("u1", "healthy"), ("u1", "healthy"),
                                   ("u2", "downloading"), ("u2", "downloading")]


def test_version_store_seeds_switches_and_recovers(tmp_path):
    bundles = toy_versions(tmp_path, "toy", (1, 2))
    store = VersionStore(tmp_path / "state")
    first = store.open(bundles[1])
    assert load_card(first).version == 1 and store.current_name() == first.name
    staging = store.new_staging("u1")
    for f in bundles[2].iterdir():
        (staging / f.name).write_bytes(f.read_bytes())
    store.install(staging, "v2-test")
    store.switch_to("v2-test")
    (tmp_path / "state" / ".current.tmp-123-abcd").write_text("half")  # what a crash mid-switch leaves
    store.new_staging("u2")
    store.write_journal({"update_id": "u1", "name": "v2-test"})

    reopened = VersionStore(tmp_path / "state")
    assert reopened.open(bundles[1]) == tmp_path / "state" / "versions" / "v2-test"
    assert not any((tmp_path / "state" / "staging").iterdir())
    assert not list((tmp_path / "state").glob(".current.tmp-*"))
    assert reopened.read_journal() == {"update_id": "u1", "name": "v2-test"}
    reopened.switch_to(first.name)
    assert (tmp_path / "state" / CURRENT).read_text().strip() == first.name
    reopened.prune(keep=set())
    assert [p.name for p in (tmp_path / "state" / "versions").iterdir()] == [first.name]
    with pytest.raises(ConfigError, match="not installed"):
        reopened.switch_to("v9-missing")


def test_state_dir_of_another_model_is_refused(tmp_path):
    VersionStore(tmp_path / "state").open(make_softmax_bundle(tmp_path / "a", name="model-a", scale=1.0))
    with pytest.raises(ConfigError, match="model-a"):
        VersionStore(tmp_path / "state").open(make_softmax_bundle(tmp_path / "b", name="model-b", scale=1.0))


def test_update_settings_need_a_state_dir(tmp_path):
    with pytest.raises(ConfigError, match="state_dir"):
        load_settings(EdgeSettings, None, bundle_dir=tmp_path, update_public_key=tmp_path / "k.pub.pem")
    settings = load_settings(EdgeSettings, None, bundle_dir=tmp_path, update_public_key=tmp_path / "k.pub.pem",
                             state_dir=tmp_path / "state", update_poll_interval_s=5)
    assert settings.update_poll_interval_s == 5.0


def test_agent_with_a_missing_update_key_does_not_start(tmp_path):
    from edge_agent.updater import open_version_store

    settings = load_settings(EdgeSettings, None, bundle_dir=make_softmax_bundle(tmp_path / "b", name="toy", scale=1.0),
                             update_public_key=tmp_path / "missing.pem", state_dir=tmp_path / "state")
    with pytest.raises(ConfigError, match="missing.pem"):
        open_version_store(settings)


def test_apply_child_priority_is_lowered_from_outside():
    import os
    import subprocess
    import sys

    from shared.delta.package import lower_priority

    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("SCHED_IDLE is Linux only")
    code = "import os, time; time.sleep(0.5); print(os.sched_getscheduler(0) == os.SCHED_IDLE, os.getpriority(os.PRIO_PROCESS, 0))"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    lower_priority(child.pid, "idle")
    assert child.communicate(timeout=10)[0].split() == ["True", "19"]
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the parent's own threads are untouched


def test_short_gil_turns_lowers_the_switch_interval_for_the_block_only():
    import sys

    from edge_agent.updater import short_gil_turns

    before = sys.getswitchinterval()
    with short_gil_turns(0.0005):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert sys.getswitchinterval() == before
    with short_gil_turns(before * 10):  # never raised
        assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), short_gil_turns(0.0005):
        raise RuntimeError("restored on the way out too")
    assert sys.getswitchinterval() == before
    with pytest.raises(InvalidInputError, match="positive"), short_gil_turns(0):
        pass


def _status(phase: str, *agents: tuple[str, str, str, int]) -> pb.RolloutStatus:
    """A rollout of update `u2` (v2) of model `m` and agents (id, update id, state, active version)."""
    return pb.RolloutStatus(
        rollouts=[pb.RolloutInfo(update_id="u2", model_name="m", version=2, phase=phase)],
        agents=[pb.AgentUpdateState(agent_id=a, model_name="m", update_id=u, state=s, active_version=v)
                for a, u, s, v in agents])


@pytest.mark.parametrize("status, outcome", [
    (_status("full", ("a", "u2", "healthy", 2), ("b", "u2", "healthy", 2)), "done"),
    (_status("full", ("a", "u2", "healthy", 2), ("b", "", "", 2)), "done"),              # b was on v2 already
    (_status("full", ("a", "u2", "healthy", 2), ("b", "u2", "rolled_back", 1)), "failed"),
    (_status("full", ("a", "u2", "healthy", 2), ("b", "u2", "applied", 1)), None),     # b is still at it
    (_status("full", ("a", "u2", "healthy", 2), ("b", "", "", 1)), None),              # b has not heard yet
    (_status("canary", ("a", "u2", "healthy", 2)), None),
    (_status("halted", ("a", "u2", "rejected", 1)), "halted"),
])
def test_wait_settles_only_when_every_agent_is_done_and_tells_failure_apart(status, outcome):
    from edgecascade.update_client import rollout_settled

    assert rollout_settled(status, "u2") == outcome
    assert rollout_settled(status, "other") == "replaced"
