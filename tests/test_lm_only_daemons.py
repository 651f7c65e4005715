"""Daemons that serve only language models: a router with llm_dirs and no model_dirs, an agent
with llm_dir and no bundle_dir. Generate works (deferral to the cloud included); every
classifier call, SDK or KServe, is NOT_FOUND with the reason; status, health and /metrics
still answer; a fleet heartbeat to such a router is recorded; settings with nothing to serve
are refused in one line."""

from __future__ import annotations

import shutil
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_agent.settings import EdgeSettings
from edgecascade.processes import InProcessDaemon, free_port
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from protos import grpc_service_pb2 as kserve_pb
from protos import grpc_service_pb2_grpc as kserve_grpc
from shared.errors import ConfigError, ModelNotFoundError
from shared.llm_policy import LLMPolicy, save_llm_policy
from shared.sdk import Client
from shared.settings import load_settings
from tests.test_cli_errors import cli, one_line_error

NO_EDGE_CLASSIFIER = "this agent serves no classifier (set bundle_dir)"
NO_CLOUD_CLASSIFIER = "this router hosts no classifier (set model_dirs)"


@pytest.fixture(scope="module")
def always_deferring_edge_lm(tiny_edge, tmp_path_factory):
    edge_lm = tmp_path_factory.mktemp("lm-only") / "edge-lm"
    shutil.copytree(tiny_edge, edge_lm)
    save_llm_policy(edge_lm, LLMPolicy(model_name="edge", threshold=1.0, min_tokens=2))   # defer everything
    return edge_lm


@pytest.fixture(scope="module")
def lm_only(always_deferring_edge_lm, long_cloud, tmp_path_factory):
    work = tmp_path_factory.mktemp("lm-only-daemons")
    metrics = {"cloud": free_port(), "edge": free_port()}
    with InProcessDaemon("cloud", {"llm_dirs": [str(long_cloud)], "metrics_port": metrics["cloud"]}, work,
                         name="cloud") as cloud:
        edge_settings = {"llm_dir": str(always_deferring_edge_lm), "cloud_target": cloud.target,
                         "metrics_port": metrics["edge"], "agent_id": "lm-only-edge"}
        with InProcessDaemon("edge", edge_settings, work, name="edge") as edge:
            yield {"cloud": cloud, "edge": edge, "metrics": metrics}


def kserve_infer(target: str, model_name: str) -> grpc.RpcError:
    request = kserve_pb.ModelInferRequest(model_name=model_name)
    request.inputs.add(name="LOGITS", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0.0, 1.0, 2.0, 3.0])
    with grpc.insecure_channel(target) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as infer_error:
            stub.ModelInfer(request, timeout=10)
        with pytest.raises(grpc.RpcError) as metadata_error:
            stub.ModelMetadata(kserve_pb.ModelMetadataRequest(name=model_name), timeout=10)
        assert stub.ServerLive(kserve_pb.ServerLiveRequest(), timeout=10).live
        assert not stub.ModelReady(kserve_pb.ModelReadyRequest(name=model_name), timeout=10).ready
    assert metadata_error.value.code() == grpc.StatusCode.NOT_FOUND
    assert metadata_error.value.details() == infer_error.value.details()
    return infer_error.value


def test_generate_defers_to_the_cloud_and_streams(lm_only):
    with Client(lm_only["edge"].target, timeout_s=60) as client:
        stream = client.generate("the cat sat", max_new_tokens=6)
        chunks = list(stream)
    assert any(c.restart for c in chunks)
    assert stream.summary.served_by == "cloud" and stream.summary.cloud_tokens > 0
    with Client(lm_only["cloud"].target, timeout_s=60, service="router") as client:
        direct = client.generate("the cat sat", max_new_tokens=6)
        list(direct)
    assert direct.text == stream.text


@pytest.mark.parametrize("side, service, message", [("edge", "agent", NO_EDGE_CLASSIFIER),
                                                     ("cloud", "router", NO_CLOUD_CLASSIFIER)])
def test_classifier_calls_are_not_found_with_the_reason(lm_only, side, service, message):
    target = lm_only[side].target
    with Client(target, service=service) as client:
        for model in ("", "toy"):
            with pytest.raises(ModelNotFoundError, match=message.replace("(", r"\(").replace(")", r"\)")):
                client.infer(np.zeros(4, np.float32), model=model)
    error = kserve_infer(target, "toy")
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == message
    assert "Traceback" not in lm_only[side].logs()


def test_status_health_and_metrics_answer(lm_only):
    with Client(lm_only["edge"].target) as client:
        status = client.status()
    assert status.agent_id == "lm-only-edge" and status.model_name == "" and not status.route_counts
    assert status.breaker_state == "closed"   # the language model's own link to the router
    with Client(lm_only["cloud"].target, service="router") as client:
        router_status = client.status()
    assert list(router_status.models) == [] and router_status.pressure == 0.0
    for side in ("edge", "cloud"):
        with grpc.insecure_channel(lm_only[side].target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with urllib.request.urlopen(f"http://127.0.0.1:{lm_only['metrics'][side]}/metrics", timeout=5) as response:
            assert b"edgecascade_requests" in response.read()
    edge_logs = lm_only["edge"].logs()
    assert "no classifier bundle (bundle_dir not set)" in edge_logs and "no heartbeat" in edge_logs


def test_a_classifier_agents_heartbeat_is_recorded(lm_only):
    """An agent with a classifier may still beat to a router without one: recorded, pressure 0."""
    heartbeat = pb.HeartbeatRequest(status=pb.AgentStatus(agent_id="classifier-edge", model_name="toy-edge",
                                                          cloud_model="toy-cloud"), interval_s=1.0)
    with grpc.insecure_channel(lm_only["cloud"].target) as channel:
        stub = pb_grpc.CloudRouterStub(channel)
        answer = stub.Heartbeat(heartbeat, timeout=5)
        fleet = stub.GetFleet(pb.FleetRequest(), timeout=5)
    assert answer.pressure == 0.0 and answer.queue_depth == 0
    assert "classifier-edge" in [entry.agent.agent_id for entry in fleet.agents]


def test_an_lm_only_agent_falls_back_when_the_cloud_is_down(always_deferring_edge_lm, tmp_path):
    """Its own breaker: with the router gone, deferrals are answered on the edge and the breaker opens."""
    settings = {"llm_dir": str(always_deferring_edge_lm), "cloud_target": f"127.0.0.1:{free_port()}",
                "breaker_failure_threshold": 1, "breaker_cooldown_s": 60}
    with InProcessDaemon("edge", settings, tmp_path) as edge, Client(edge.target, timeout_s=60) as client:
        stream = client.generate("the cat sat", max_new_tokens=6)
        list(stream)
        status = client.status()
    assert stream.summary.served_by == "edge_fallback" and stream.summary.fallback_reason
    assert status.breaker_state == "open"


@pytest.mark.parametrize("kind, expected", [
    ("edge", "set bundle_dir (a classifier bundle), llm_dir (a language model from export-llm), or both"),
    ("cloud", "set model_dirs (classifier bundles), llm_dirs or llm_remote_url (language models)"),
])
def test_nothing_to_serve_is_refused_in_one_line(kind, expected, tmp_path):
    out = cli(kind, "run", "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert out.returncode == 2
    one_line_error(out, "nothing to serve", expected)


@pytest.mark.parametrize("settings, problem", [
    ({"llm_dir": "/lm", "update_public_key": "/k.pem", "state_dir": "/s"}, "update_public_key is set but bundle_dir is not"),
    ({"llm_dir": "/lm", "policy_file": "/p.json"}, "policy_file is set but bundle_dir is not"),
])
def test_classifier_only_settings_need_a_bundle(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        load_settings(EdgeSettings, **settings)
