"""The router's update store (`update_store_dir`): published updates and rollout state survive a
restart, and what is broken on disk is set aside at start without stopping the router."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from contextlib import asynccontextmanager, contextmanager
from types import SimpleNamespace

import grpc
import pytest

from cloud_router.rollout import CANARY, FULL, AgentRecord
from cloud_router.update_servicer import UpdateRpcs
from cloud_router.update_store import CORRUPT_SUFFIX, MANIFEST_FILE, PAYLOAD_FILE, STATE_FILE, StoredState
from cloud_router.updates import UpdateService
from edge_agent.update_link import UpdateLink
from edgecascade.processes import Daemon, InProcessDaemon
from edgecascade.update_client import rollout_status
from edgecascade.update_package import package_from_bundles
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import ConfigError, UnavailableError
from shared.grpc_server import bind, create_server
from tests.helpers.bundles import make_softmax_bundle
from tests.helpers.updates import crash, edge_settings, make_keys, publish_package, served_version, toy_versions, wait_for, wait_log, wait_state

DONE = {"healthy", "rejected", "rolled_back"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store-keys")
    key, public = make_keys(tmp)
    return {"key": key, "public": public, "tmp": tmp}


def packages(keys, name: str, versions=(1, 2), chunk_size: int = 32, **kwargs):
    """{version: package from the version before} of one toy model."""
    bundles = toy_versions(keys["tmp"] / f"bundles-{name}", name, versions)
    return bundles, {v: package_from_bundles(bundles[v], bundles[v - 1], keys["key"], chunk_size=chunk_size, **kwargs)
                     for v in versions[1:]}


def reopen(service: UpdateService, **kwargs) -> UpdateService:
    """What a restarted router loads from `service`'s store."""
    service.close()
    return UpdateService(store_dir=service.store.directory, **kwargs)


# --- UpdateService on a store, in process -----------------------------------------------------------

def test_rollouts_and_agent_records_survive_a_reopen(keys, tmp_path, caplog):
    _, pkgs = packages(keys, "toy", (1, 2, 3))
    store = tmp_path / "store"
    service = UpdateService(public_key_path=keys["public"], store_dir=store)
    agents = [f"agent-{i}" for i in range(5)]
    for agent in agents:
        service.notice(agent, "toy", 1)
    update = service.publish(pkgs[2].signed_manifest, pkgs[2].payload, 30)
    offered = sorted(a for a in agents if service.notice(a, "toy", 1))
    service.report(offered[0], model_name="toy", update_id=update.update_id, version=2, state="downloading")
    before = (store / STATE_FILE).read_bytes()
    assert not any(service.notice(a, "toy", 1) for a in agents if a not in offered)
    assert (store / STATE_FILE).read_bytes() == before  # a poll that changes nothing but last_seen writes nothing

    service = reopen(service, public_key_path=keys["public"])
    rollout = service.rollouts["toy"]
    assert (rollout.update_id, rollout.phase, rollout.canary_percent) == (update.update_id, CANARY, 30)
    assert sorted(rollout.canary_agents) == offered
    assert rollout.update.published_unix_s == update.published_unix_s
    records = service.agents
    assert sorted(records) == agents
    assert (records[offered[0]].state, records[offered[0]].canary) == ("downloading", True)
    assert all(records[a].state == "offered" for a in offered[1:])
    chunks = [service.chunk(update.update_id, i) for i in range(update.manifest.chunk_count)]
    assert b"".join(chunks) == pkgs[2].payload
    for agent in offered:  # the rollout goes on where it stood
        service.report(agent, model_name="toy", update_id=update.update_id, version=2, state="healthy", active_version=2)
    assert service.rollouts["toy"].phase == FULL
    service = reopen(service)
    assert service.rollouts["toy"].phase == FULL
    newer = service.publish(pkgs[3].signed_manifest, pkgs[3].payload, 0)
    assert [p.name for p in (store / "updates").iterdir()] == [newer.update_id]  # the replaced update is deleted
    service.close()


def test_broken_stored_updates_are_set_aside_and_the_rest_loads(keys, tmp_path, caplog):
    store = tmp_path / "store"
    service = UpdateService(public_key_path=keys["public"], store_dir=store)
    ids = {}
    for name in ("corrupt", "truncated", "missing", "torn", "good"):
        _, pkgs = packages(keys, f"toy-{name}")
        ids[name] = service.publish(pkgs[2].signed_manifest, pkgs[2].payload, 0).update_id
    service.close()
    updates = store / "updates"
    payload = bytearray((updates / ids["corrupt"] / PAYLOAD_FILE).read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    (updates / ids["corrupt"] / PAYLOAD_FILE).write_bytes(payload)
    (updates / ids["truncated"] / PAYLOAD_FILE).write_bytes(payload[:10])
    (updates / ids["missing"] / MANIFEST_FILE).unlink()
    torn = updates / ids["torn"] / f".{PAYLOAD_FILE}.tmp-123-abcd"  # a rewrite cut short: the old file stays whole
    torn.write_bytes(b"half")
    (updates / "0123456789abcdef").mkdir()  # a publish cut short before the state file named it
    (updates / "0123456789abcdef" / f".{PAYLOAD_FILE}.tmp-1-ffff").write_bytes(b"half")
    (store / f".{STATE_FILE}.tmp-9-0000").write_text("{")  # a state write cut short

    with caplog.at_level(logging.INFO, logger="cloud_router"):
        service = UpdateService(public_key_path=keys["public"], store_dir=store)
    assert sorted(service.rollouts) == ["toy-good", "toy-torn"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, reason in (("corrupt", "does not match its hash"), ("truncated", "payload is 10 bytes"),
                         ("missing", MANIFEST_FILE)):
        (line,) = [w for w in warnings if ids[name] in w and "not offered" in w]
        assert f"toy-{name}" in line and reason in line, line
        assert (updates / (ids[name] + CORRUPT_SUFFIX)).is_dir()  # kept for the operator
        assert service.notice("agent", f"toy-{name}", 1) is None
    assert service.notice("agent", "toy-torn", 1).update_id == ids["torn"]
    assert not torn.exists() and any(str(torn) in w for w in warnings)
    assert not (updates / "0123456789abcdef").exists()
    assert not list(store.glob(f".{STATE_FILE}.tmp-*"))
    service = reopen(service)
    assert sorted(service.rollouts) == ["toy-good", "toy-torn"]  # the set-aside ones are not named any more
    service.close()


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "edgecascade.router-updates/9"}',
                                     b'{"rollouts": {"toy": {"update_id": "../../etc", "canary_percent": 0, '
                                     b'"phase": "full", "canary_agents": [], "published_unix_s": 0}}}'])
def test_an_unreadable_state_file_is_kept_aside_and_the_router_starts_empty(tmp_path, caplog, content):
    store = tmp_path / "store"
    UpdateService(store_dir=store).close()
    (store / STATE_FILE).write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="cloud_router"):
        service = UpdateService(store_dir=store)
    assert service.rollouts == {} and service.agents == {}
    assert (store / (STATE_FILE + CORRUPT_SUFFIX)).read_bytes() == content
    assert not (store / STATE_FILE).exists()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert str(store / STATE_FILE) in line and "publish again" in line
    service.close()


def test_an_expired_stored_update_is_shown_but_not_offered(keys, tmp_path):
    _, pkgs = packages(keys, "toy-old", expires_in_s=60, now=time.time() - 120)
    relay = UpdateService(check_uploads=False, store_dir=tmp_path / "store")  # it takes the expired upload
    update = relay.publish(pkgs[2].signed_manifest, pkgs[2].payload, 0)
    service = reopen(relay, public_key_path=keys["public"])
    rollouts, _ = service.status()
    assert [r.update_id for r in rollouts] == [update.update_id]
    assert service.notice("agent", "toy-old", 1) is None
    service.close()


def test_one_router_per_store_dir(tmp_path):
    first = UpdateService(store_dir=tmp_path / "store")
    with pytest.raises(ConfigError, match="in use by another router"):
        UpdateService(store_dir=tmp_path / "store")
    first.close()
    UpdateService(store_dir=tmp_path / "store").close()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="update_store_dir"):
        UpdateService(store_dir=tmp_path / "file")


# --- a real router, SIGKILLed and restarted -----------------------------------------------------------

def notice(router: Daemon, agent_id: str, model_name: str) -> pb.UpdateNotice:
    with grpc.insecure_channel(router.target) as channel:
        return pb_grpc.CloudRouterStub(channel).GetUpdateNotice(
            pb.UpdateNoticeRequest(agent_id=agent_id, model_name=model_name, model_version=1), timeout=5)


@contextmanager
def canary_on_probation(keys, tmp_path, name: str):
    """A router on a store, two agents of `name` v1, and a canary rollout of v2 (canary 1 %: one
    canary, almost always) whose canaries have swapped: `active`, on probation until each serves
    one request, so the test picks when the window ends. Yields the fleet; set `fleet.router` to a
    restarted router (`restart`) so it is stopped at the end."""
    bundles, pkgs = packages(keys, name)
    cloud = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    router_settings = {"model_dirs": [str(cloud)], "update_store_dir": str(tmp_path / "store"),
                       "update_public_key": str(keys["public"])}
    fleet = SimpleNamespace(router=Daemon("cloud", router_settings, tmp_path, name="router").start(),
                            router_settings=router_settings, package=pkgs[2], agents={})
    router = fleet.router
    fleet.agents = {a: InProcessDaemon("edge", edge_settings(bundles[1], router, tmp_path / a, keys["public"], a,
                                                             update_health_window_s=120, update_health_requests=1),
                                       tmp_path, name=a)
                    for a in (f"{name}-a", f"{name}-b")}
    try:
        for agent in fleet.agents.values():
            agent.start()
        wait_for(lambda: len(rollout_status(router.target).agents) == 2, "both agents to poll")
        fleet.update_id = publish_package(router, pkgs[2], canary_percent=1)

        def canaries_active():
            canaries = [a for a in rollout_status(router.target).agents if a.canary]
            return canaries if canaries and all(a.state == "active" for a in canaries) else None

        fleet.canaries = {a.agent_id for a in wait_for(canaries_active, "the canary to swap", logs=router.logs)}
        yield fleet
    finally:
        for agent in fleet.agents.values():
            agent.stop()
        fleet.router.stop()


def restart(fleet, tmp_path) -> Daemon:
    """A new router on the killed one's port and store."""
    return Daemon("cloud", {**fleet.router_settings, "listen": fleet.router.target}, tmp_path,
                  name="router-restarted").start()


def test_a_killed_router_restarts_with_its_rollout_and_the_fleet_finishes_it(keys, tmp_path):
    with canary_on_probation(keys, tmp_path, "toy-restart") as fleet:
        update_id, canaries = fleet.update_id, fleet.canaries
        crash(fleet.router)
        restarted_at = time.time()
        router = fleet.router = restart(fleet, tmp_path)
        status = rollout_status(router.target)
        (rollout,) = status.rollouts
        assert (rollout.update_id, rollout.phase, rollout.canary_percent) == (update_id, "canary", 1)
        for record in status.agents:
            if record.agent_id in canaries:
                # `active` unless the kill came between the router taking the report and storing it:
                # then the record is still `applied` and the agent, never answered, sends it again
                assert (record.update_id, record.canary) == (update_id, True) and record.state in ("applied", "active")
            else:
                assert record.update_id == "" and not record.canary  # never offered while the canary is out
        # (a canary on probation does not poll)
        wait_for(lambda: all(a.last_seen_unix_s >= restarted_at for a in rollout_status(router.target).agents
                             if a.agent_id not in canaries), "the other agent to poll the restarted router", logs=router.logs)

        for agent_id in sorted(fleet.agents, key=lambda a: a not in canaries):  # canaries first, then the rest follow
            agent = fleet.agents[agent_id]
            wait_state(router, agent, agent_id, update_id, {"active"} | DONE)
            assert served_version(agent) == 2  # the request that ends its probation
            assert wait_state(router, agent, agent_id, update_id, DONE).state == "healthy"
        assert rollout_status(router.target).rollouts[0].phase == "full"
        with grpc.insecure_channel(router.target) as channel:
            chunk = pb_grpc.CloudRouterStub(channel).FetchPatchChunk(pb.PatchChunkRequest(update_id=update_id, index=1))
        assert chunk.data == fleet.package.payload[32:64]


def test_a_healthy_report_sent_while_the_router_is_down_arrives_after_its_restart(keys, tmp_path):
    with canary_on_probation(keys, tmp_path, "toy-report") as fleet:
        update_id, agents = fleet.update_id, fleet.agents
        crash(fleet.router)
        for agent_id in fleet.canaries:
            assert served_version(agents[agent_id]) == 2  # ends its probation: its `healthy` finds no router
            wait_log(agents[agent_id], f"could not report update state healthy of update {update_id}")

        router = fleet.router = restart(fleet, tmp_path)
        for agent_id in fleet.canaries:
            wait_log(agents[agent_id], f"update {update_id}: state healthy reported to {router.target} after all")
            record = wait_state(router, agents[agent_id], agent_id, update_id, DONE)
            assert (record.state, record.active_version) == ("healthy", 2), record.message
        assert rollout_status(router.target).rollouts[0].phase == "full"
        for agent_id in set(agents) - fleet.canaries:  # the rest follow
            wait_state(router, agents[agent_id], agent_id, update_id, {"active"} | DONE)
            assert served_version(agents[agent_id]) == 2
            assert wait_state(router, agents[agent_id], agent_id, update_id, DONE).state == "healthy"


def test_a_router_starts_over_a_corrupted_store_and_offers_only_sound_updates(keys, tmp_path):
    store = tmp_path / "store"
    service = UpdateService(store_dir=store)
    ids = {}
    for name in ("bad", "good"):
        _, pkgs = packages(keys, f"toy-{name}")
        ids[name] = service.publish(pkgs[2].signed_manifest, pkgs[2].payload, 0).update_id
    service.close()
    payload = store / "updates" / ids["bad"] / PAYLOAD_FILE
    payload.write_bytes(payload.read_bytes()[:-1] + b"\0")
    (store / "updates" / ids["good"] / f".{PAYLOAD_FILE}.tmp-7-beef").write_bytes(b"torn")

    cloud = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    with InProcessDaemon("cloud", {"model_dirs": [str(cloud)], "update_store_dir": str(store),
                                   "update_public_key": str(keys["public"])}, tmp_path, name="router") as router:
        assert notice(router, "agent", "toy-good").update_id == ids["good"]
        assert not notice(router, "agent", "toy-bad").available
        assert [r.model_name for r in rollout_status(router.target).rollouts] == ["toy-good"]
        with grpc.insecure_channel(router.target) as channel, pytest.raises(grpc.RpcError) as err:
            pb_grpc.CloudRouterStub(channel).FetchPatchChunk(pb.PatchChunkRequest(update_id=ids["bad"], index=0), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        logs = router.logs()
    (line,) = [line for line in logs.splitlines() if ids["bad"] in line and "not offered" in line]
    assert "WARNING" in line and "toy-bad" in line and "does not match" in line
    assert f"update store {store}: loaded 1 published updates" in logs


def test_without_a_store_the_router_says_updates_live_in_memory(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cloud_router"):
        service = UpdateService()
    assert service.store is None
    assert any("memory only" in r.getMessage() for r in caplog.records)


def test_a_publish_that_cannot_be_stored_fails_and_polls_go_on(keys, tmp_path, caplog):
    _, pkgs = packages(keys, "toy", (1, 2, 3))
    store = tmp_path / "store"
    service = UpdateService(store_dir=store)
    first = service.publish(pkgs[2].signed_manifest, pkgs[2].payload, 0)
    (store / STATE_FILE).unlink()
    (store / STATE_FILE).mkdir()  # the state file can no longer be replaced
    with pytest.raises(UnavailableError, match="rollout state"):
        service.publish(pkgs[3].signed_manifest, pkgs[3].payload, 0)
    assert service.rollouts["toy"].update_id == first.update_id  # the old rollout stands, its files too
    assert [p.name for p in (store / "updates").iterdir()] == [first.update_id]
    with caplog.at_level(logging.ERROR, logger="cloud_router"):
        assert service.notice("new-agent", "toy", 1).update_id == first.update_id
    assert any("serving on from memory" in r.getMessage() for r in caplog.records)
    shutil.rmtree(store / "updates")
    (store / "updates").write_text("")  # nowhere to put an update's files
    with pytest.raises(UnavailableError, match="could not store update"):
        service.publish(pkgs[3].signed_manifest, pkgs[3].payload, 0)
    service.close()


# --- state writes: group commit off the event loop; a report's ack means durable -------------------------

STEPS = ("downloading", "verified", "applied", "active", "healthy")


class UpdateRpcsOnly(UpdateRpcs, pb_grpc.CloudRouterServicer):
    """The router's update RPCs alone, served in the test's own process so the test can see its store."""

    def __init__(self, updates: UpdateService) -> None:
        self.updates = updates


@asynccontextmanager
async def update_server(service: UpdateService):
    """A gRPC server on loopback serving `service`'s update RPCs; yields its target. On the way
    out it stops and flushes, like the router daemon."""
    server = create_server(1 << 22)
    pb_grpc.add_CloudRouterServicer_to_server(UpdateRpcsOnly(service), server)
    port = bind(server, "127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await service.aclose()


async def report_steps(stub, agent_id: str, model_name: str, update_id: str, steps=STEPS) -> None:
    """One agent's reports of one update, in order, each sent once its previous one was acked."""
    for state in steps:
        await stub.ReportUpdateState(pb.UpdateStateReport(
            agent_id=agent_id, model_name=model_name, update_id=update_id, version=2, state=state,
            active_version=2 if state in ("active", "healthy") else 1), timeout=10)


def stored_records(store) -> dict[str, AgentRecord]:
    return {r.agent_id: r for r in StoredState.model_validate_json((store / STATE_FILE).read_bytes()).agents}


def test_concurrent_reports_are_durable_when_acked_and_share_writes(keys, tmp_path):
    _, pkgs = packages(keys, "toy-fleet")
    store = tmp_path / "store"
    agents = [f"agent-{i:02d}" for i in range(50)]

    async def main():
        service = UpdateService(public_key_path=keys["public"], store_dir=store)
        async with update_server(service) as target, grpc.aio.insecure_channel(target) as channel:
            update = await service.publish_off_loop(pkgs[2].signed_manifest, pkgs[2].payload, 0)
            stub = pb_grpc.CloudRouterStub(channel)
            writes_before = service.store.state_writes
            await asyncio.gather(*(report_steps(stub, a, "toy-fleet", update.update_id) for a in agents))
            # every ack came after a write that covered its report: no further write is needed
            records = stored_records(store)
            return update, service.store.state_writes - writes_before, records

    update, writes, records = asyncio.run(main())
    assert sorted(records) == agents
    assert all((r.update_id, r.state, r.active_version) == (update.update_id, "healthy", 2) for r in records.values())
    reports = len(agents) * len(STEPS)
    # shared writes: how many depends on the machine's speed (14-16 here when quiet, 72 once
    # under load), so the bound only says that reports in flight together share a write
    assert 1 <= writes <= reports // 2, f"{writes} writes for {reports} reports"


def test_a_failed_state_write_answers_unavailable_and_the_agent_resends(keys, tmp_path, caplog):
    _, pkgs = packages(keys, "toy-full")
    store = tmp_path / "store"

    async def main():
        service = UpdateService(public_key_path=keys["public"], store_dir=store)
        async with update_server(service) as target:
            update = await service.publish_off_loop(pkgs[2].signed_manifest, pkgs[2].payload, 0)
            link = UpdateLink(target, agent_id="a", max_message_bytes=1 << 22, timeout_s=10)
            newcomer = UpdateLink(target, agent_id="b", max_message_bytes=1 << 22, timeout_s=10)
            (store / STATE_FILE).unlink()
            (store / STATE_FILE).mkdir()  # the state file can no longer be replaced
            assert not await link.report(model_name="toy-full", update_id=update.update_id, version=2, state="healthy",
                                         active_version=2)
            assert link.pending_report.state == "healthy"  # kept, to be sent again
            with pytest.raises(UnavailableError, match="UNAVAILABLE"):
                await newcomer.notice("toy-full", 1)  # an offer too waits for its write
            # the router serves on from memory
            assert (service.agents["a"].state, service.agents["b"].state) == ("healthy", "offered")
            assert not (await link.notice("toy-full", 2)).available  # a poll that offers nothing does not wait
            (store / STATE_FILE).rmdir()  # the cause is gone
            assert await link.resend_report() and link.pending_report is None
            records = stored_records(store)
            assert (records["a"].state, records["b"].state) == ("healthy", "offered")
            assert (await newcomer.notice("toy-full", 1)).update_id == update.update_id
            await link.close()
            await newcomer.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all("could not store the rollout state" in e and "serving on from memory" in e for e in errors)
    assert any("could not report update state healthy" in r.getMessage() and "UNAVAILABLE" in r.getMessage()
               for r in caplog.records)


def test_acked_reports_survive_a_killed_router(keys, tmp_path):
    _, pkgs = packages(keys, "toy-kill")
    cloud = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    settings = {"model_dirs": [str(cloud)], "update_store_dir": str(tmp_path / "store")}
    agents = [f"agent-{i:02d}" for i in range(50)]
    router = Daemon("cloud", settings, tmp_path, name="router").start()
    try:
        update_id = publish_package(router, pkgs[2])

        async def fleet():
            async with grpc.aio.insecure_channel(router.target) as channel:
                stub = pb_grpc.CloudRouterStub(channel)

                async def agent(agent_id):
                    notice = await stub.GetUpdateNotice(
                        pb.UpdateNoticeRequest(agent_id=agent_id, model_name="toy-kill", model_version=1), timeout=10)
                    assert notice.update_id == update_id
                    # half the fleet stops at a step short of the end
                    await report_steps(stub, agent_id, "toy-kill", update_id, STEPS[:3 if agent_id[-1] in "02468" else 5])

                await asyncio.gather(*(agent(a) for a in agents))

        asyncio.run(fleet())
        crash(router)  # right after the last ack
        router = Daemon("cloud", {**settings, "listen": router.target}, tmp_path, name="router-restarted").start()
        records = {a.agent_id: a for a in rollout_status(router.target).agents}
    finally:
        router.stop()
    assert sorted(records) == agents
    for agent_id, record in records.items():
        assert (record.update_id, record.state) == (update_id, "applied" if agent_id[-1] in "02468" else "healthy")
