"""The router's per-agent update records are bounded (cloud_router/agent_records.py): records of
silent agents expire (`update_agent_record_ttl_s`), and beyond `update_max_agents` a new agent id
is refused (TooManyAgentsError, RESOURCE_EXHAUSTED) while known agents keep working. In memory,
on the store, and in Redis; the store and Redis always hold what the router shows."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
import redis

from cloud_router.redis_connection import client_from_url, close_quietly
from cloud_router.redis_keys import RedisKeys
from cloud_router.redis_updates import RedisUpdateService
from cloud_router.rollout import CANARY, FULL
from cloud_router.update_store import STATE_FILE
from cloud_router.updates import UpdateService
from edgecascade.processes import InProcessDaemon
from edgecascade.update_client import rollout_status
from edgecascade.update_package import package_from_bundles
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import ERROR_CLASS_KEY, TooManyAgentsError
from tests.helpers.bundles import make_softmax_bundle
from tests.helpers.updates import edge_settings, make_keys, publish_package, toy_versions, wait_for, wait_state


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1_000_000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent-record-keys")
    key, public = make_keys(tmp)
    return {"key": key, "public": public, "tmp": tmp}


def package(keys, name: str):
    bundles = toy_versions(keys["tmp"] / f"bundles-{name}", name, (1, 2))
    return bundles, package_from_bundles(bundles[2], bundles[1], keys["key"], chunk_size=32)


def stored_agent_ids(store) -> list[str]:
    return sorted(record["agent_id"] for record in json.loads((store / STATE_FILE).read_text())["agents"])


def shown_agent_ids(router) -> list[str]:
    return sorted(a.agent_id for a in rollout_status(router.target).agents)


# --- in process, with a clock of the test's -----------------------------------------------------------

def test_silent_agents_expire_canaries_in_progress_stay_and_a_restart_gives_grace(keys, tmp_path):
    _, pkg = package(keys, "toy")
    clock, store = FakeClock(), tmp_path / "store"
    service = UpdateService(store_dir=store, agent_record_ttl_s=60.0, clock=clock)
    agents = [f"agent-{i}" for i in range(10)]
    for agent in agents:
        assert service.notice(agent, "toy", 1) is None
    update = service.publish(pkg.signed_manifest, pkg.payload, 30)
    canaries = {a for a in agents if service.notice(a, "toy", 1)}
    assert canaries and service.rollouts["toy"].phase == CANARY

    clock.now_s += 61
    service.notice("newcomer", "toy", 2)   # on the update's version already: never a canary
    _, records = service.status()
    assert sorted(r.agent_id for r in records) == sorted(canaries | {"newcomer"})  # canaries in progress stay
    assert stored_agent_ids(store) == sorted(canaries | {"newcomer"})              # the state file follows

    for agent in canaries:   # the rollout goes on with the other records gone
        service.report(agent, model_name="toy", update_id=update.update_id, version=2, state="healthy", active_version=2)
    assert service.rollouts["toy"].phase == FULL
    gone = next(a for a in agents if a not in canaries)
    assert service.notice(gone, "toy", 1).update_id == update.update_id  # back: a new agent, offered the update
    record = service.agents[gone]
    assert (record.state, record.canary) == ("offered", False)

    # a restart after a long outage: stored records get the whole ttl again, counted from the start
    before = sorted(service.agents)
    service.close()
    clock.now_s += 3600
    service = UpdateService(store_dir=store, agent_record_ttl_s=60.0, clock=clock)
    assert sorted(r.agent_id for r in service.status()[1]) == before
    clock.now_s += 61
    service.notice("after-restart", "toy", 2)
    assert [r.agent_id for r in service.status()[1]] == ["after-restart"]
    assert stored_agent_ids(store) == ["after-restart"]
    service.close()


def test_a_full_table_refuses_new_agents_only(keys):
    clock = FakeClock()
    service = UpdateService(agent_record_ttl_s=60.0, max_agents=3, clock=clock)
    for agent in ("a", "b", "c"):
        service.notice(agent, "toy", 1)
    with pytest.raises(TooManyAgentsError, match=r"3 agents, its limit \(update_max_agents\): new agent 'd'"):
        service.notice("d", "toy", 1)
    with pytest.raises(TooManyAgentsError):
        service.report("e" * 10_000, model_name="toy", update_id="0" * 16, version=2, state="downloading")
    service.report("a", model_name="toy", update_id="0" * 16, version=2, state="downloading")  # a known agent
    assert service.notice("b", "toy", 1) is None
    assert sorted(service.agents) == ["a", "b", "c"]
    clock.now_s += 61
    service.notice("a", "toy", 1)   # the first call after a second drops the silent ones
    assert service.notice("d", "toy", 1) is None
    assert sorted(service.agents) == ["a", "d"]


# --- a real router and a real agent ---------------------------------------------------------------

def test_a_flood_of_made_up_agent_ids_is_capped_and_a_real_agent_still_updates(keys, tmp_path):
    bundles, pkg = package(keys, "toy-flood")
    store = tmp_path / "store"
    cloud = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    settings = {"model_dirs": [str(cloud)], "update_public_key": str(keys["public"]), "update_store_dir": str(store),
                "update_max_agents": 20}
    with InProcessDaemon("cloud", settings, tmp_path, name="router") as router:
        agent_settings = edge_settings(bundles[1], router, tmp_path / "real", keys["public"], "real-agent")
        with InProcessDaemon("edge", agent_settings, tmp_path, name="real-agent") as agent:
            wait_for(lambda: shown_agent_ids(router) == ["real-agent"], "the real agent to poll", logs=router.logs)
            admitted, refused = [], []
            with grpc.insecure_channel(router.target) as channel:
                stub = pb_grpc.CloudRouterStub(channel)
                for i in range(100):
                    made_up = f"made-up-{i:03d}"
                    try:
                        if i % 2:
                            stub.GetUpdateNotice(pb.UpdateNoticeRequest(agent_id=made_up, model_name="toy-flood"),
                                                 timeout=10)
                        else:
                            stub.ReportUpdateState(pb.UpdateStateReport(agent_id=made_up, model_name="toy-flood",
                                                                        update_id="0" * 16, version=2, state="healthy"),
                                                   timeout=10)
                        admitted.append(made_up)
                    except grpc.RpcError as err:
                        refused.append(err)
                # a made-up agent that got in is known now, and keeps working
                stub.GetUpdateNotice(pb.UpdateNoticeRequest(agent_id=admitted[0], model_name="toy-flood"), timeout=10)

            assert len(admitted) == 19 and len(refused) == 81
            for err in refused:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "keeps update records of 20 agents, its limit (update_max_agents): new agent 'made-up-" in err.details()
                assert dict(err.trailing_metadata())[ERROR_CLASS_KEY] == "TooManyAgentsError"
            assert shown_agent_ids(router) == sorted(admitted + ["real-agent"])
            assert "refused the update poll or report of new agent" in router.logs()

            update_id = publish_package(router, pkg)   # the table is full; the real agent is known
            assert wait_state(router, agent, "real-agent", update_id, {"healthy", "rejected", "rolled_back"}).state == "healthy"
            assert len(shown_agent_ids(router)) == 20
    assert stored_agent_ids(store) == sorted(admitted + ["real-agent"])

    with InProcessDaemon("cloud", settings, tmp_path, name="router-restarted") as router:  # the same table after a restart
        assert shown_agent_ids(router) == sorted(admitted + ["real-agent"])
        with grpc.insecure_channel(router.target) as channel, pytest.raises(grpc.RpcError) as err:
            pb_grpc.CloudRouterStub(channel).GetUpdateNotice(pb.UpdateNoticeRequest(agent_id="one-more", model_name="x"),
                                                             timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_silent_agent_record_expires_on_a_real_router(tmp_path):
    store = tmp_path / "store"
    cloud = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    settings = {"model_dirs": [str(cloud)], "update_store_dir": str(store), "update_agent_record_ttl_s": 0.3}
    with InProcessDaemon("cloud", settings, tmp_path, name="router") as router:
        with grpc.insecure_channel(router.target) as channel:
            stub = pb_grpc.CloudRouterStub(channel)
            for i in range(5):
                stub.GetUpdateNotice(pb.UpdateNoticeRequest(agent_id=f"gone-{i}", model_name="toy", model_version=1),
                                     timeout=10)
            wait_for(lambda: shown_agent_ids(router) == [], "the silent agents' records to expire", logs=router.logs)
            wait_for(lambda: stored_agent_ids(store) == [], "the state file to follow")
            stub.GetUpdateNotice(pb.UpdateNoticeRequest(agent_id="gone-0", model_name="toy", model_version=3), timeout=10)
            (record,) = rollout_status(router.target).agents   # back: a new agent
            assert (record.agent_id, record.active_version, record.update_id) == ("gone-0", 3, "")
        assert "dropped the update records of 5 agents silent for over 0.3 s" in router.logs()


# --- Redis -------------------------------------------------------------------------------------------

def test_redis_records_are_capped_and_expire_and_the_canary_rollout_finishes(keys, redis_url):
    _, pkg = package(keys, "toy-redis")
    clock, prefix = FakeClock(), RedisKeys("bounded")
    direct = redis.Redis.from_url(redis_url)

    def indexed() -> list[str]:
        return sorted(a.decode() for a in direct.smembers(prefix.update_agent_index()))

    async def scenario():
        client = client_from_url(redis_url)
        try:
            checks = UpdateService(public_key_path=keys["public"], announce_memory=False, agent_record_ttl_s=60.0,
                                   max_agents=5, clock=clock)
            service = RedisUpdateService(checks, client, prefix, where=redis_url, prune_interval_s=3600.0)
            agents = [f"agent-{i}" for i in range(5)]
            for agent in agents:
                assert await service.poll(agent, "toy-redis", 1) is None
            for made_up in ("made-up-1", "made-up-2"):
                with pytest.raises(TooManyAgentsError, match="update_max_agents"):
                    await service.poll(made_up, "toy-redis", 1)
                with pytest.raises(TooManyAgentsError):
                    await service.take_report(made_up, model_name="toy-redis", update_id="0" * 16, version=2,
                                              state="healthy")
            assert indexed() == agents

            update = await service.publish_off_loop(pkg.signed_manifest, pkg.payload, 1)
            canaries = [a for a in agents if await service.poll(a, "toy-redis", 1)]
            assert canaries and len(canaries) < len(agents)   # 1 %: (nearly always) the lowest bucket of the five

            clock.now_s += 61   # every record is silent past the ttl; the canary's stays (its rollout is in progress)
            assert await service.poll("newcomer", "toy-redis", 2) is None   # at the cap: a prune makes room
            assert indexed() == sorted(canaries + ["newcomer"])
            assert sorted(direct.keys(prefix.update_agent("*"))) == sorted(
                prefix.update_agent(a).encode() for a in canaries + ["newcomer"])

            for canary in canaries:
                await service.take_report(canary, model_name="toy-redis", update_id=update.update_id, version=2,
                                          state="healthy", active_version=2)
            rollouts, records = await service.rollout_status("toy-redis")
            assert rollouts[0].phase == FULL
            assert sorted(r.agent_id for r in records) == sorted(canaries + ["newcomer"])
            clock.now_s += 61   # the rollout is full: nobody is kept now, and status drops them
            assert await service.rollout_status() == (rollouts, [])
            assert indexed() == [] and not direct.keys(prefix.update_agent("*"))
        finally:
            await close_quietly(client)

    asyncio.run(scenario())
    direct.close()
