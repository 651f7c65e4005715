"""Model-update state in Redis (`update_state_in_redis`): router replicas share published updates,
rollouts and agent records, so an agent or operator may reach any replica."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis

from cloud_router.redis_connection import client_from_url, close_quietly
from cloud_router.redis_keys import RedisKeys
from cloud_router.redis_updates import RedisUpdateService
from cloud_router.rollout import FULL
from cloud_router.settings import RouterSettings
from cloud_router.updates import UpdateService
from edgecascade.processes import Daemon
from edgecascade.update_client import rollout_status
from edgecascade.update_package import package_from_bundles
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import ConfigError
from shared.settings import load_settings
from tests.helpers.bundles import make_softmax_bundle
from tests.helpers.updates import edge_settings, make_keys, publish_package, served_version, toy_versions, wait_for, wait_state


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis-update-keys")
    key, public = make_keys(tmp)
    return {"key": key, "public": public, "tmp": tmp}


def packages(keys, name: str, versions=(1, 2, 3)):
    bundles = toy_versions(keys["tmp"] / f"bundles-{name}", name, versions)
    return bundles, {v: package_from_bundles(bundles[v], bundles[v - 1], keys["key"], chunk_size=32) for v in versions[1:]}


@pytest.mark.parametrize("settings, problem", [
    ({"update_state_in_redis": True}, "needs redis_url"),
    ({"update_state_in_redis": True, "redis_url": "redis://127.0.0.1:1/0", "update_store_dir": "/tmp/x"}, "not both"),
    ({"update_state_in_redis": True, "redis_url": "redis+cluster://127.0.0.1:1"}, "not Redis Cluster"),
])
def test_contradictory_settings_are_refused(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        load_settings(RouterSettings, **settings)


# --- two services on one Redis, in process ----------------------------------------------------------

def test_two_replicas_share_state_and_concurrent_canary_reports_finish_the_rollout(keys, redis_url):
    _, pkgs = packages(keys, "toy")
    prefix = RedisKeys("t")

    async def scenario():
        clients = [client_from_url(redis_url) for _ in range(2)]
        try:
            a, b = (RedisUpdateService(UpdateService(public_key_path=keys["public"], announce_memory=False), c, prefix,
                                       where=redis_url) for c in clients)
            agents = [f"agent-{i}" for i in range(4)]
            for agent in agents:
                assert await a.poll(agent, "toy", 1) is None
            replaced = await a.publish_off_loop(pkgs[2].signed_manifest, pkgs[2].payload, 0)
            update = await b.publish_off_loop(pkgs[3].signed_manifest, pkgs[3].payload, 99.99)
            assert not redis.Redis.from_url(redis_url).keys(f"t:update:{replaced.update_id}*")  # the replaced one is gone
            offered = [agent for agent in agents if await (a, b)[agents.index(agent) % 2].poll(agent, "toy", 1)]
            assert len(offered) >= 2  # 99.99 %: (nearly) everyone is a canary
            chunks = [await a.fetch_chunk(update.update_id, i) for i in range(update.manifest.chunk_count)]
            assert b"".join(chunks) == pkgs[3].payload

            # every canary reports healthy at once, through alternating replicas: the last one's
            # report must see all the others (WATCH), so the rollout reaches `full`
            await asyncio.gather(*[(a, b)[i % 2].take_report(agent, model_name="toy", update_id=update.update_id, version=3,
                                                             state="healthy", active_version=3)
                                   for i, agent in enumerate(offered)])
            rollouts, records = await b.rollout_status("toy")
            assert [(r.update_id, r.phase) for r in rollouts] == [(update.update_id, FULL)]
            assert rollouts[0].update.payload_bytes == len(pkgs[3].payload)
            # a late report never moves a record back
            await a.take_report(offered[0], model_name="toy", update_id=update.update_id, version=3, state="downloading")
            _, records = await a.rollout_status("toy")
            assert {r.agent_id: r.state for r in records if r.agent_id in offered} == {x: "healthy" for x in offered}
        finally:
            for client in clients:
                await close_quietly(client)

    asyncio.run(scenario())



def test_a_replica_with_another_update_key_does_not_offer_the_stored_update(keys, redis_url, caplog):
    _, pkgs = packages(keys, "keyed")
    _, other_public = make_keys(keys["tmp"], name="other")
    prefix = RedisKeys("k")

    async def scenario():
        clients = [client_from_url(redis_url) for _ in range(2)]
        try:
            right = RedisUpdateService(UpdateService(public_key_path=keys["public"], announce_memory=False), clients[0],
                                       prefix, where=redis_url)
            wrong = RedisUpdateService(UpdateService(public_key_path=other_public, announce_memory=False), clients[1],
                                       prefix, where=redis_url)
            update = await right.publish_off_loop(pkgs[2].signed_manifest, pkgs[2].payload, 0)
            for _ in range(2):
                assert await wrong.poll("agent-w", "keyed", 1) is None       # not offered, no error
            await wrong.take_report("agent-r", model_name="keyed", update_id=update.update_id, version=2,
                                    state="healthy", active_version=2)       # reports still land
            assert (await right.poll("agent-x", "keyed", 1)).update_id == update.update_id
            _, records = await right.rollout_status("keyed")
            return update, {r.agent_id: r.state for r in records}
        finally:
            for client in clients:
                await close_quietly(client)

    update, states = asyncio.run(scenario())
    assert states["agent-r"] == "healthy"
    errors = [r for r in caplog.records if r.levelname == "ERROR" and update.update_id in r.getMessage()]
    assert len(errors) == 1 and "bad_signature" in errors[0].getMessage()   # said once, with the reason

# --- two router daemons and real agents ---------------------------------------------------------------

def comparable(status: pb.RolloutStatus) -> tuple:
    agents = [(a.agent_id, a.update_id, a.state, a.canary, a.active_version) for a in status.agents]
    return [(r.update_id, r.phase, r.canary_percent, r.payload_bytes) for r in status.rollouts], agents


def test_replicas_share_updates_and_redis_down_gives_unavailable(keys, own_redis, tmp_path):
    bundles, pkgs = packages(keys, "toy-shared", (1, 2))
    cloud = make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True)
    settings = {"model_dirs": [str(cloud)], "redis_url": own_redis.url, "update_state_in_redis": True,
                "update_public_key": str(keys["public"])}
    with Daemon("cloud", settings, tmp_path, name="router-a") as router_a, \
            Daemon("cloud", settings, tmp_path, name="router-b") as router_b:
        def agent(router: Daemon, agent_id: str) -> Daemon:
            return Daemon("edge", edge_settings(bundles[1], router, tmp_path / agent_id, keys["public"], agent_id),
                          tmp_path, name=agent_id)

        with agent(router_b, "agent-on-b") as on_b:
            wait_for(lambda: [a.agent_id for a in rollout_status(router_a.target).agents] == ["agent-on-b"],
                     "router A to see the agent polling router B")
            # the only agent known is the canary; it takes the update from router B
            update_id = publish_package(router_a, pkgs[2], canary_percent=1)
            assert wait_state(router_a, on_b, "agent-on-b", update_id, {"healthy"}).canary
            with agent(router_a, "agent-on-a") as on_a:  # offered only once the canary's report made it `full`
                wait_state(router_b, on_a, "agent-on-a", update_id, {"healthy"})
                assert served_version(on_a) == served_version(on_b) == 2
                status_a, status_b = rollout_status(router_a.target), rollout_status(router_b.target)
                assert comparable(status_a) == comparable(status_b)
                assert comparable(status_a)[0] == [(update_id, FULL, 1.0, len(pkgs[2].payload))]

                own_redis.kill()
                with grpc.insecure_channel(router_b.target) as channel:
                    stub = pb_grpc.CloudRouterStub(channel)
                    for call, request in ((stub.GetRolloutStatus, pb.RolloutStatusRequest()),
                                          (stub.GetUpdateNotice, pb.UpdateNoticeRequest(agent_id="x", model_name="toy-shared")),
                                          (stub.FetchPatchChunk, pb.PatchChunkRequest(update_id=update_id, index=0))):
                        with pytest.raises(grpc.RpcError) as err:
                            call(request, timeout=10)
                        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                        assert "keeps update state in Redis" in err.value.details()
                assert served_version(on_a) == 2  # inference goes on (the agents answer on their own)
                assert router_a.process.poll() is None and router_b.process.poll() is None
