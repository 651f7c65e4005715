"""Updates that succeed, through real daemons: swap under load, rollback after a failed health
window, a staged canary rollout, and the `edgecascade update` command line."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from contextlib import contextmanager

import grpc
import pytest

from benchmarks.chaos_proxy import ChaosProxy
from edge_agent.updater import PAUSE_ENV
from edgecascade.cli import main as cli_main
from edgecascade.processes import Daemon, InProcessDaemon
from edgecascade.update_client import rollout_status
from edgecascade.update_package import package_from_bundles
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.tensor_codec import to_proto
from tests.helpers.bundles import CONFIDENT
from tests.helpers.updates import (
    FRAGILE_INPUT,
    AnyDaemon,
    agent_record,
    edge_settings,
    make_fragile_bundle,
    make_keys,
    publish_package,
    served_version,
    toy_versions,
    wait_for,
    wait_log,
    wait_state,
)

DONE = {"healthy", "rejected", "rolled_back"}


@pytest.fixture
def world(update_world):
    return update_world


def agent_for(world, name: str, agent_id: str, bundle, env=None, **extra) -> AnyDaemon:
    """An agent in this process; in a child process of its own when it needs `env`."""
    tmp = world["tmp"] / agent_id
    settings = edge_settings(bundle, world["router"], tmp / "state", world["public"], agent_id, **extra)
    if env:
        return Daemon("edge", settings, tmp, name=agent_id, env=env)
    return InProcessDaemon("edge", settings, tmp, name=agent_id)


class Load:
    """Threads sending confident requests to an agent until stopped; counts versions and failures."""

    def __init__(self, agent: Daemon, clients: int = 3) -> None:
        self.versions: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(agent.target)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        stub = pb_grpc.EdgeAgentStub(self._channel)
        request = pb.InferRequest(tensor=to_proto(CONFIDENT))
        while not self._stop.is_set():
            try:
                self.versions[int(stub.Infer(request, timeout=5).model_version)] += 1
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._channel.close()


def test_swaps_under_load_fail_no_request(world):
    bundles = toy_versions(world["tmp"] / "load-bundles", "toy-load", (1, 2, 3))
    with agent_for(world, "toy-load", "loaded", bundles[1]) as agent, Load(agent) as load:
        for version in (2, 3):
            update_id = publish_package(world["router"], package_from_bundles(bundles[version], bundles[version - 1], world["key"]))
            assert wait_state(world["router"], agent, "loaded", update_id, DONE).state == "healthy"
        wait_for(lambda: load.versions[3] > 20, "requests on v3")
    assert load.failures == []
    assert load.versions[1] > 0 and load.versions[3] > 0


def test_download_resumes_after_a_broken_link(world):
    bundles = toy_versions(world["tmp"] / "link-bundles", "toy-link", (1, 2))
    router = world["router"]
    proxy = ChaosProxy(router.target)
    pause = {PAUSE_ENV: "download:0.6"}  # after the first chunk, long enough to cut the link
    try:
        with agent_for(world, "toy-link", "link", bundles[1], env=pause, cloud_target=proxy.target) as agent:
            pkg = package_from_bundles(bundles[2], bundles[1], world["key"], chunk_size=32)
            update_id = publish_package(router, pkg)
            wait_log(agent, "TEST PAUSE at download")
            proxy.cut()
            wait_log(agent, f"update {update_id} interrupted")
            proxy.restore()
            assert wait_state(router, agent, "link", update_id, DONE).state == "healthy"
            assert f"resuming the download of update {update_id}: 1 of {pkg.manifest.chunk_count} chunks" in agent.logs()
            assert served_version(agent) == 2
    finally:
        proxy.close()


@contextmanager
def fragile_update_active(world, agent_id: str):
    """An agent of its own (model `toy-<agent_id>`) that has swapped in a v2 which raises on
    FRAGILE_INPUT, still in a 30 s health window; yields (agent, update id)."""
    model = f"toy-{agent_id}"
    tmp = world["tmp"] / f"{agent_id}-bundles"
    bundles = toy_versions(tmp, model, (1,))
    fragile = make_fragile_bundle(tmp / "fragile-v2", name=model, version=2)
    with agent_for(world, model, agent_id, bundles[1], update_health_window_s=30.0) as agent:
        update_id = publish_package(world["router"], package_from_bundles(fragile, bundles[1], world["key"]))
        wait_state(world["router"], agent, agent_id, update_id, {"active"} | DONE)
        assert served_version(agent) == 2  # passed warm-up and golden inputs
        yield agent, update_id


def test_failed_health_window_rolls_back_on_its_own(world):
    with fragile_update_active(world, "fragile") as (agent, update_id):
        with pytest.raises(grpc.RpcError):
            served_version(agent, FRAGILE_INPUT)  # live traffic breaks it
        record = wait_state(world["router"], agent, "fragile", update_id, DONE)
        assert (record.state, record.reason) == ("rolled_back", "health_window"), record.message
        assert served_version(agent) == 1
        assert served_version(agent, FRAGILE_INPUT) == 1  # the old model takes that input fine
        assert record.active_version == 1


def test_failed_health_window_without_a_previous_version_reports_the_failure(world):
    with fragile_update_active(world, "orphan") as (agent, update_id):
        versions = world["tmp"] / "orphan" / "state" / "versions"
        (previous,) = [p for p in versions.iterdir() if p.name.startswith("v1-")]
        shutil.rmtree(previous)  # an operator (or a full disk) took the version to go back to
        with pytest.raises(grpc.RpcError):
            served_version(agent, FRAGILE_INPUT)
        record = wait_state(world["router"], agent, "orphan", update_id, DONE)
        assert (record.state, record.reason) == ("rejected", "health_window"), record.message
        assert "no previous version" in record.message
        assert served_version(agent) == 2  # nothing to go back to: it keeps serving


def test_canary_goes_first_and_the_rest_follow_when_it_is_healthy(world):
    bundles = toy_versions(world["tmp"] / "canary-bundles", "toy-canary", (1, 2))
    router = world["router"]
    first = agent_for(world, "toy-canary", "fleet-a", bundles[1], update_health_window_s=1.5).start()
    try:
        with agent_for(world, "toy-canary", "fleet-b", bundles[1], update_health_window_s=1.5) as second:
            # 1 %: no agent of two is likely to fall in it, so the one with the lowest bucket is the canary
            wrong_key, _ = make_keys(world["tmp"], "wrong")
            bad = package_from_bundles(bundles[2], bundles[1], wrong_key)
            bad_id = publish_package(router, bad, canary_percent=1)
            wait_for(lambda: any(a.update_id == bad_id and a.state == "rejected" for a in rollout_status(router.target).agents),
                     "the canary to refuse the badly signed update", logs=second.logs)
            status = rollout_status(router.target, "toy-canary")
            assert status.rollouts[0].phase == "halted"
            canaries = [a for a in status.agents if a.canary]
            assert len(canaries) == 1
            others = [a for a in status.agents if not a.canary]
            assert all(a.update_id != bad_id for a in others)  # never offered a halted rollout

            good_id = publish_package(router, package_from_bundles(bundles[2], bundles[1], world["key"]), canary_percent=1)

            def canary_active():
                agents = rollout_status(router.target, "toy-canary").agents
                return [a for a in agents if a.update_id == good_id and a.state == "active"]

            (canary,) = wait_for(canary_active, "the canary to swap", logs=second.logs)
            rest = [a for a in rollout_status(router.target, "toy-canary").agents if a.agent_id != canary.agent_id]
            assert rest and all(a.update_id != good_id for a in rest)  # still waiting on the canary
            for agent_id, daemon in (("fleet-a", first), ("fleet-b", second)):
                assert wait_state(router, daemon, agent_id, good_id, DONE).state == "healthy"
            assert rollout_status(router.target, "toy-canary").rollouts[0].phase == "full"
    finally:
        first.stop()


def test_command_line_keygen_push_status_rollback(world, capsys):
    tmp = world["tmp"] / "cli"
    tmp.mkdir()
    assert cli_main(["update", "keygen", "--private", str(tmp / "k.pem"), "--public", str(tmp / "k.pub.pem")]) == 0
    assert cli_main(["update", "keygen", "--private", str(tmp / "k.pem"), "--public", str(tmp / "k.pub.pem")]) == 2
    bundles = toy_versions(tmp, "toy-cli", (1, 2))
    router = world["router"]
    settings = edge_settings(bundles[1], router, tmp / "state", tmp / "k.pub.pem", "cli-agent")
    with InProcessDaemon("edge", settings, tmp, name="cli-agent") as agent:
        common = ["--key", str(tmp / "k.pem"), "--router", router.target, "--wait", "--wait-s", "30"]
        capsys.readouterr()
        assert cli_main(["update", "push", "--model", str(bundles[2]), "--base", str(bundles[1]), *common]) == 0
        out = capsys.readouterr()
        assert "patch" in out.out and "vs full model" in out.out and "rollout done" in out.out
        assert "uploading [" in out.err
        assert served_version(agent) == 2

        assert cli_main(["update", "status", "--router", router.target, "--model", "toy-cli"]) == 0
        table = capsys.readouterr().out
        assert "cli-agent" in table and "healthy" in table and "v2" in table

        # a push to a lower version is refused; a signed rollback is taken
        assert cli_main(["update", "push", "--model", str(bundles[1]), "--base", str(bundles[2]), *common]) == 2
        assert "rollback" in capsys.readouterr().err
        assert cli_main(["update", "rollback", "--model", str(bundles[1]), "--base", str(bundles[2]), *common]) == 0
        assert served_version(agent) == 1
        assert agent_record(router, "cli-agent").state == "healthy"
