"""Fuzz every RPC of both daemons and both APIs (edgecascade.v1 and KServe v2) over the wire.

For each method, hypothesis sends: random bytes; well-framed messages of the input type with
hostile values (unicode edge cases, NaN/Inf, extreme integers, unknown enums, nested junk);
the same field numbers with the wrong wire types and invalid UTF-8; and, for inference,
structurally valid requests with hostile dtypes, huge or negative shapes and NaN/Inf data.
Calls go through a raw `channel.unary_unary` (or stream) with identity serializers, each with a
deadline. Every call must end with a status code, never a hang, and never INTERNAL (an
exception our code did not expect); after each method's run a well-formed request must still
be served. The router is a real daemon with Redis scheduling; the agent defers to it.

Budget: `EDGECASCADE_FUZZ_EXAMPLES` examples per strategy and method (default 15, derandomized
so CI is repeatable); set it higher, e.g. 500, for a long random run.
"""

from __future__ import annotations

import os
import shutil

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.redis_process import RedisServer
from edgecascade.processes import Daemon
from protos import edgecascade_pb2 as pb
from protos import grpc_service_pb2 as kserve_pb
from shared.sdk import Client
from tests.helpers.bundles import CONFIDENT, UNSURE, make_softmax_bundle
from tests.helpers.fuzz_strategies import kserve_requests, random_bytes, tensor_requests, wire_messages, wrong_wire_types

EXAMPLES = int(os.environ.get("EDGECASCADE_FUZZ_EXAMPLES", "15"))
CALL_TIMEOUT_S = 5.0
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 50,
                         suppress_health_check=list(HealthCheck))

#: Codes that mean "our code raised something it did not expect" (grpc_errors maps those to
#: INTERNAL) or that gRPC could not map (UNKNOWN; undecodable bytes get INVALID_ARGUMENT, #18).
UNEXPECTED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

SERVICES = {
    "agent": [pb.DESCRIPTOR.services_by_name["EdgeAgent"], kserve_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]],
    "router": [pb.DESCRIPTOR.services_by_name["CloudRouter"],
               kserve_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]],
}
METHODS = [(daemon, service, method) for daemon, services in SERVICES.items() for service in services
           for method in service.methods]
MODEL_OF = {"agent": "toy-edge", "router": "toy-cloud"}


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    tmp = tmp_path_factory.mktemp("fuzz")
    edge = make_softmax_bundle(tmp / "edge", name="toy-edge", scale=1.0)
    cloud = make_softmax_bundle(tmp / "cloud", name="toy-cloud", scale=10.0, permute=True)
    redis = RedisServer(tmp / "redis").start()
    try:
        router_settings = {"model_dirs": [str(cloud)], "redis_url": redis.url, "max_delay_ms": 1.0,
                           "redis_prefix": "fuzz", "max_message_bytes": 1 << 20}
        with Daemon("cloud", router_settings, tmp, name="router") as router:
            agent_settings = {"bundle_dir": str(edge), "cloud_target": router.target, "agent_id": "fuzz-agent",
                              "max_message_bytes": 1 << 20}
            with Daemon("edge", agent_settings, tmp, name="agent") as agent:
                channels = {"agent": grpc.insecure_channel(agent.target), "router": grpc.insecure_channel(router.target)}
                yield {"agent": agent, "router": router, "channels": channels}
                for channel in channels.values():
                    channel.close()
    finally:
        redis.stop()


def call_raw(channel: grpc.Channel, path: str, method, messages: list[bytes]) -> grpc.StatusCode:
    """Send `messages` (one for unary input) to `path` with identity serializers; the status."""
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path)(iter(messages), timeout=CALL_TIMEOUT_S):
                pass
        elif method.client_streaming:
            channel.stream_unary(path)(iter(messages), timeout=CALL_TIMEOUT_S)
        elif method.server_streaming:
            for _ in channel.unary_stream(path)(messages[0], timeout=CALL_TIMEOUT_S):
                pass
        else:
            channel.unary_unary(path)(messages[0], timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def still_serving(world, daemon: str) -> None:
    """A well-formed request right after the fuzzing is answered."""
    service = "agent" if daemon == "agent" else "router"
    with Client(world[daemon].target, service=service, timeout_s=10) as client:
        for value in (CONFIDENT, UNSURE):
            assert client.infer(value).label_name in ("a", "b", "c")


def fuzz_method(world, daemon, service, method, strategy) -> None:
    channel = world["channels"][daemon]
    path = f"/{service.full_name}/{method.name}"

    @FUZZ_SETTINGS
    @given(st.lists(strategy, min_size=1, max_size=3 if method.client_streaming else 1))
    def run(messages):
        code = call_raw(channel, path, method, messages)
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED or method.server_streaming, f"{path} hung: {messages!r:.300}"
        assert code not in UNEXPECTED, f"{path} answered {code.name} to {messages!r:.300}"

    run()
    still_serving(world, daemon)


def _ids(item) -> str:
    daemon, service, method = item
    return f"{daemon}-{service.name}-{method.name}"


@pytest.mark.parametrize("target", METHODS, ids=[_ids(m) for m in METHODS])
def test_random_bytes_on_the_wire(daemons, target):
    fuzz_method(daemons, *target, random_bytes())


@pytest.mark.parametrize("target", METHODS, ids=[_ids(m) for m in METHODS])
def test_hostile_field_values(daemons, target):
    daemon, service, method = target
    fuzz_method(daemons, daemon, service, method, wire_messages(method.input_type))


@pytest.mark.parametrize("target", METHODS, ids=[_ids(m) for m in METHODS])
def test_wrong_wire_types_and_invalid_utf8(daemons, target):
    daemon, service, method = target
    fuzz_method(daemons, daemon, service, method, wrong_wire_types(method.input_type))


INFER_METHODS = [m for m in METHODS if m[2].name in ("Infer", "ModelInfer", "ModelStreamInfer")]


@pytest.mark.parametrize("target", INFER_METHODS, ids=[_ids(m) for m in INFER_METHODS])
def test_hostile_tensors_dtypes_shapes_nan_inf(daemons, target):
    daemon, service, method = target
    strategy = kserve_requests(MODEL_OF[daemon]) if method.name != "Infer" else tensor_requests(MODEL_OF[daemon])
    fuzz_method(daemons, daemon, service, method, strategy)


def test_no_traceback_for_fuzzed_requests_in_the_logs(daemons):
    """Runs after the fuzz tests above (file order): nothing they sent crashed a handler."""
    for name in ("agent", "router"):
        logs = daemons[name].logs()
        unexpected = [line for line in logs.splitlines() if "unexpected error in" in line or "Traceback" in line]
        assert not unexpected, f"{name}: {unexpected[:5]}"
