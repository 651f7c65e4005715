"""Standard interfaces of both daemons, against real daemon processes on loopback:
KServe v2 through the stock tritonclient, Prometheus /metrics, gRPC reflection."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from onnx import TensorProto, helper
from prometheus_client.parser import text_string_to_metric_families

from cloud_router.metrics import RouterMetrics
from edge_agent.cascade import ActiveModel, Cascade
from edge_agent.kserve_backend import EdgeKServeBackend
from edge_agent.settings import EdgeSettings
from edgecascade import Client
from edgecascade.processes import InProcessDaemon, free_port
from shared.errors import ConfigError, EdgecascadeError, InvalidInputError, UnavailableError
from shared.kserve_backend import InferenceRequest
from shared.kserve_models import absolute_deadline_s, batch_priority
from shared.metrics import MetricsEndpoint, listen_host
from shared.model_card import InputSpec, ModelCard, save_card
from shared.model_loader import load_model
from shared.policy import PolicyFile, load_policy, save_policy
from tests.helpers.bundles import CONFIDENT, UNSURE, make_softmax_bundle

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEXT_LABELS = ["card", "refund", "transfer"]


def make_text_bundle(bundle_dir: Path, *, name: str, scale: float, permute: bool = False, threshold: float = 0.6) -> Path:
    """A real ONNX text classifier: STRING [N] -> split on spaces -> word counts -> softmax(scale * counts @ P)."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    weights = np.roll(np.eye(3, dtype=np.float32), 1, axis=1) if permute else np.eye(3, dtype=np.float32)
    nodes = [
        helper.make_node("StringSplit", ["input"], ["tokens", "token_counts"]),
        helper.make_node("TfIdfVectorizer", ["tokens"], ["counts"], mode="TF", min_gram_length=1, max_gram_length=1,
                         max_skip_count=0, ngram_counts=[0], ngram_indexes=[0, 1, 2], pool_strings=TEXT_LABELS),
        helper.make_node("MatMul", ["counts", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, [3, 3], (weights * scale).flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, bundle_dir / "model.onnx")
    save_card(bundle_dir, ModelCard(name=name, version=1, labels=TEXT_LABELS, runtime="onnx", input=InputSpec(kind="text")))
    save_policy(bundle_dir, PolicyFile(model_name=name, model_version=1, labels=TEXT_LABELS, threshold=threshold))
    return bundle_dir


TEXTS = ["card card card", "card refund", "transfer transfer please", "naïve café refund"]


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    """A router hosting a tensor and a text model; one edge agent for each, all with /metrics."""
    work = tmp_path_factory.mktemp("interfaces")
    bundles = {
        "toy-edge": make_softmax_bundle(work / "toy-edge", name="toy-edge", scale=1.0),
        "toy-cloud": make_softmax_bundle(work / "toy-cloud", name="toy-cloud", scale=10.0, permute=True),
        "text-edge": make_text_bundle(work / "text-edge", name="text-edge", scale=1.0),
        "text-cloud": make_text_bundle(work / "text-cloud", name="text-cloud", scale=4.0, permute=True),
    }
    ports = {name: free_port() for name in ("cloud", "edge", "text_edge")}
    cloud_settings = {"model_dirs": [str(bundles["toy-cloud"]), str(bundles["text-cloud"])], "max_delay_ms": 2.0,
                      "metrics_port": ports["cloud"]}
    with InProcessDaemon("cloud", cloud_settings, work, name="cloud") as cloud, \
            InProcessDaemon("edge", {"bundle_dir": str(bundles["toy-edge"]), "cloud_target": cloud.target, "cloud_model": "toy-cloud",
                                     "metrics_port": ports["edge"]}, work, name="edge") as edge, \
            InProcessDaemon("edge", {"bundle_dir": str(bundles["text-edge"]), "cloud_target": cloud.target,
                                     "cloud_model": "text-cloud", "metrics_port": ports["text_edge"]}, work, name="text_edge") as text_edge:
        yield {"cloud": cloud, "edge": edge, "text_edge": text_edge, "metrics_ports": ports, "bundles": bundles}


@pytest.fixture
def triton(daemons):
    clients = {name: tritonclient_grpc.InferenceServerClient(daemons[name].target) for name in ("cloud", "edge", "text_edge")}
    yield clients
    for client in clients.values():
        client.close()


def fp32_input(batch: np.ndarray, name: str = "input"):
    tensor = tritonclient_grpc.InferInput(name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


def text_input(texts: list[str]):
    tensor = tritonclient_grpc.InferInput("input", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))
    return tensor


# --- KServe v2 through tritonclient -----------------------------------------------------------


def test_health_and_readiness_on_both_daemons(triton):
    for name, model in (("edge", "toy-edge"), ("cloud", "toy-cloud"), ("cloud", "text-cloud"), ("text_edge", "text-edge")):
        client = triton[name]
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")
        assert not client.is_model_ready(model, "7")
        assert not client.is_model_ready("no-such-model")
    assert triton["edge"].get_server_metadata().name == "edgecascade-edge-agent"
    assert triton["cloud"].get_server_metadata().name == "edgecascade-cloud-router"


def tensors_of(metadata) -> list[tuple[str, str, list[int]]]:
    return [(t.name, t.datatype, list(t.shape)) for t in metadata]


def test_model_metadata_describes_the_real_inputs_and_outputs(triton):
    edge = triton["edge"].get_model_metadata("toy-edge")
    assert (edge.name, list(edge.versions), edge.platform) == ("toy-edge", ["1"], "onnxruntime_onnx")
    assert tensors_of(edge.inputs) == [("input", "FP32", [-1, 3])]
    predictions = [("probs", "FP32", [-1, 3]), ("label", "INT64", [-1]), ("label_name", "BYTES", [-1])]
    assert tensors_of(edge.outputs) == predictions + [
        ("served_by", "BYTES", [-1]), ("max_prob", "FP32", [-1]), ("margin", "FP32", [-1]), ("entropy", "FP32", [-1])]
    cloud = triton["cloud"].get_model_metadata("toy-cloud")
    assert tensors_of(cloud.inputs) == [("input", "FP32", [-1, 3])] and tensors_of(cloud.outputs) == predictions
    assert tensors_of(triton["cloud"].get_model_metadata("text-cloud").inputs) == [("input", "BYTES", [-1])]
    assert tensors_of(triton["text_edge"].get_model_metadata("text-edge").inputs) == [("input", "BYTES", [-1])]


def assert_same_as_sdk(result, sdk_results, *, edge: bool) -> None:
    """The KServe outputs, row by row, equal what the SDK returned for the same inputs."""
    probs = result.as_numpy("probs")
    assert probs.dtype == np.float32 and probs.shape == (len(sdk_results), 3)
    for row, sdk in enumerate(sdk_results):
        assert np.array_equal(probs[row], sdk.probabilities)
        assert int(result.as_numpy("label")[row]) == sdk.label
        assert result.as_numpy("label_name")[row].decode() == sdk.label_name
        if edge:
            assert result.as_numpy("served_by")[row].decode() == sdk.served_by
            for signal in ("max_prob", "margin", "entropy"):
                assert result.as_numpy(signal)[row] == np.float32(getattr(sdk, signal))
    response = result.get_response()
    assert len(response.raw_output_contents) == len(response.outputs)  # always raw
    expected_routes = ",".join(sdk.served_by for sdk in sdk_results) if edge else "cloud"
    assert response.parameters["served_by"].string_param == expected_routes


def test_fp32_infer_equals_the_sdk_on_both_daemons(daemons, triton):
    batch = np.stack([CONFIDENT, UNSURE, np.array([0.0, 0.0, 5.0], np.float32)])
    with Client(daemons["edge"].target) as sdk:
        sdk_edge = [sdk.infer(row) for row in batch]
    assert [r.served_by for r in sdk_edge] == ["edge", "cloud", "edge"]
    result = triton["edge"].infer("toy-edge", [fp32_input(batch)], request_id="fp32-batch")
    assert_same_as_sdk(result, sdk_edge, edge=True)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("toy-edge", "1", "fp32-batch")
    assert response.parameters["model_name"].string_param == "toy-edge,toy-cloud,toy-edge"
    assert response.parameters["defer_reason"].string_param == ",low_confidence,"
    least_confident = min(r.max_prob for r in sdk_edge)
    assert response.parameters["max_prob"].double_param == pytest.approx(least_confident, rel=1e-6)

    with Client(daemons["cloud"].target, service="router") as sdk:
        sdk_cloud = [sdk.infer(row, model="toy-cloud") for row in batch]
    result = triton["cloud"].infer("toy-cloud", [fp32_input(batch)], priority=1, timeout=5_000_000)
    assert_same_as_sdk(result, sdk_cloud, edge=False)
    assert result.get_response().parameters["model_version"].string_param == "1"


def test_one_row_request_parameters_are_that_rows_values(daemons, triton):
    result = triton["edge"].infer("toy-edge", [fp32_input(UNSURE[None, :])])
    with Client(daemons["edge"].target) as sdk:
        expected = sdk.infer(UNSURE)
    parameters = result.get_response().parameters
    assert parameters["served_by"].string_param == "cloud" == expected.served_by
    assert parameters["model_version"].string_param == expected.model_version
    assert parameters["fallback_reason"].string_param == ""
    for signal in ("max_prob", "margin", "entropy"):
        assert parameters[signal].double_param == pytest.approx(getattr(expected, signal), rel=1e-6)


def test_bytes_text_infer_equals_the_sdk_on_both_daemons(daemons, triton):
    with Client(daemons["text_edge"].target) as sdk:
        sdk_edge = [sdk.infer(text) for text in TEXTS]
    assert {r.served_by for r in sdk_edge} == {"edge", "cloud"}  # both routes are exercised
    assert_same_as_sdk(triton["text_edge"].infer("text-edge", [text_input(TEXTS)]), sdk_edge, edge=True)

    with Client(daemons["cloud"].target, service="router") as sdk:
        sdk_cloud = [sdk.infer(text, model="text-cloud") for text in TEXTS]
    assert_same_as_sdk(triton["cloud"].infer("text-cloud", [text_input(TEXTS)]), sdk_cloud, edge=False)


def test_requested_outputs_only(triton):
    wanted = [tritonclient_grpc.InferRequestedOutput("label_name"), tritonclient_grpc.InferRequestedOutput("served_by")]
    result = triton["edge"].infer("toy-edge", [fp32_input(CONFIDENT[None, :])], outputs=wanted)
    assert [o.name for o in result.get_response().outputs] == ["label_name", "served_by"]
    assert result.as_numpy("served_by")[0].decode() == "edge" and result.as_numpy("probs") is None


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as exc_info:
        call()
    return exc_info.value.status(), exc_info.value.message()


def test_errors_map_to_kserve_status_codes(triton):
    edge, cloud = triton["edge"], triton["cloud"]
    good = fp32_input(CONFIDENT[None, :])
    assert status_of(lambda: edge.infer("no-such-model", [good]))[0] == "StatusCode.NOT_FOUND"
    assert status_of(lambda: cloud.infer("no-such-model", [good]))[0] == "StatusCode.NOT_FOUND"
    assert status_of(lambda: edge.get_model_metadata("no-such-model"))[0] == "StatusCode.NOT_FOUND"
    assert status_of(lambda: edge.infer("toy-edge", [good], model_version="7"))[0] == "StatusCode.NOT_FOUND"

    as_int = tritonclient_grpc.InferInput("input", [1, 3], "INT64")
    as_int.set_data_from_numpy(np.array([[1, 2, 3]], np.int64))
    bad = {
        "wrong datatype": ([as_int], "is FP32 with shape [-1, 3]; got INT64"),
        "wrong width": ([fp32_input(np.zeros((2, 4), np.float32))], "row 0 of input 'input'"),
        "no batch dimension": ([fp32_input(CONFIDENT)], "got shape [3]"),
        "wrong name": ([fp32_input(CONFIDENT[None, :], name="x")], "takes one input named 'input'"),
        "not finite": ([fp32_input(np.array([[np.nan, 0, 0]], np.float32))], "NaN or infinity"),
        "too many rows": ([fp32_input(np.zeros((4097, 3), np.float32))], "send at most 4096"),
    }
    for model, client in (("toy-edge", edge), ("toy-cloud", cloud)):
        for case, (inputs, message) in bad.items():
            code, text = status_of(lambda: client.infer(model, inputs))
            assert code == "StatusCode.INVALID_ARGUMENT", case
            assert message in text, (case, text)
    code, text = status_of(lambda: triton["text_edge"].infer("text-edge", [text_input(["card", "  "])]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "row 1" in text and "empty" in text
    code, _ = status_of(lambda: triton["text_edge"].infer("text-edge", [fp32_input(CONFIDENT[None, :])]))
    assert code == "StatusCode.INVALID_ARGUMENT"


def test_timeout_parameter_becomes_the_deadline(triton):
    code, _ = status_of(lambda: triton["edge"].infer("toy-edge", [fp32_input(UNSURE[None, :])], timeout=1))
    assert code == "StatusCode.DEADLINE_EXCEEDED"  # 1 µs: gone before the cascade can start


def test_edge_is_unavailable_until_its_model_is_loaded(daemons):
    """In process: the backend refuses with UNAVAILABLE while the model is not loaded."""
    settings = EdgeSettings(bundle_dir=daemons["bundles"]["toy-edge"], cloud_target=None)
    model = load_model(settings.bundle_dir, edge=True)
    backend = EdgeKServeBackend(Cascade(ActiveModel(model, load_policy(settings.bundle_dir / "policy.json")), None), settings)
    request = InferenceRequest(model_name="toy-edge", model_version="", request_id="r", inputs={"input": CONFIDENT[None, :]})
    assert backend.server_live() and not backend.server_ready() and not backend.model_ready("toy-edge", "")
    with pytest.raises(UnavailableError):
        asyncio.run(backend.infer(request))
    model.load()
    assert backend.server_ready() and backend.model_ready("toy-edge", "")
    assert asyncio.run(backend.infer(request)).parameters["served_by"] == "edge"


def test_deadline_and_priority_mapping():
    assert [batch_priority(level) for level in (0, 1, 4, 5, 9)] == [0, 4, 1, 0, -4]
    request = InferenceRequest("m", "", "", {}, deadline_s=time.monotonic() + 2.0)
    assert absolute_deadline_s(request, default_timeout_ms=100, max_timeout_ms=10_000) == pytest.approx(time.monotonic() + 2.0, abs=0.05)
    no_deadline = InferenceRequest("m", "", "", {})
    assert absolute_deadline_s(no_deadline, default_timeout_ms=100, max_timeout_ms=10_000) == pytest.approx(time.monotonic() + 0.1, abs=0.05)
    with pytest.raises(InvalidInputError, match="beyond the limit"):
        absolute_deadline_s(request, default_timeout_ms=100, max_timeout_ms=1_000)


# --- Prometheus /metrics ----------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_counters_move_by_exactly_the_requests_sent(daemons, triton):
    ports = daemons["metrics_ports"]
    edge_before, cloud_before = scrape(ports["edge"]), scrape(ports["cloud"])
    with Client(daemons["edge"].target) as sdk:
        for _ in range(3):
            assert sdk.infer(CONFIDENT).served_by == "edge"
        for _ in range(2):
            assert sdk.infer(UNSURE).served_by == "cloud"
        with pytest.raises(InvalidInputError):
            sdk.infer(np.zeros(4, np.float32))
    assert triton["edge"].infer("toy-edge", [fp32_input(np.stack([CONFIDENT, UNSURE]))]) is not None
    status_of(lambda: triton["edge"].infer("toy-edge", [fp32_input(CONFIDENT)]))  # refused as a whole
    with Client(daemons["cloud"].target, service="router") as sdk:
        for _ in range(2):
            sdk.infer(UNSURE, model="toy-cloud")
    triton["cloud"].infer("toy-cloud", [fp32_input(np.stack([UNSURE, UNSURE, CONFIDENT]))])
    edge_after, cloud_after = scrape(ports["edge"]), scrape(ports["cloud"])

    def moved(before, after, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    edge_requests = {
        ("edgecascade", "edge", "OK"): 3,
        ("edgecascade", "cloud", "OK"): 2,
        ("edgecascade", "none", "INVALID_ARGUMENT"): 1,
        ("kserve", "edge", "OK"): 1,
        ("kserve", "cloud", "OK"): 1,
        ("kserve", "none", "INVALID_ARGUMENT"): 1,
        ("edgecascade", "edge_fallback", "OK"): 0,
    }
    for (api, route, status), count in edge_requests.items():
        assert moved(edge_before, edge_after, "edgecascade_requests_total", api=api, route=route, status=status) == count, (api, route, status)
    assert moved(edge_before, edge_after, "edgecascade_request_duration_seconds_count", api="edgecascade", route="edge") == 3
    assert moved(edge_before, edge_after, "edgecascade_request_duration_seconds_count", api="kserve", route="cloud") == 1
    assert moved(edge_before, edge_after, "edgecascade_deferrals_total", reason="low_confidence") == 3
    assert value(edge_after, "edgecascade_model_version", model="toy-edge") == 1
    assert value(edge_after, "edgecascade_breaker_state", state="closed") == 1
    assert value(edge_after, "edgecascade_update_state", state="active") == 1
    assert value(edge_after, "edgecascade_cloud_pressure") == 0
    assert 0 < value(edge_after, "edgecascade_deferral_ratio") < 1

    # the router saw the 3 deferrals over edgecascade.v1, the 2 direct SDK calls and 3 KServe rows
    assert moved(cloud_before, cloud_after, "edgecascade_requests_total", api="edgecascade", route="cloud", status="OK") == 5
    assert moved(cloud_before, cloud_after, "edgecascade_requests_total", api="kserve", route="cloud", status="OK") == 3
    assert moved(cloud_before, cloud_after, "edgecascade_batch_size_sum", model="toy-cloud") == 8
    assert 1 <= moved(cloud_before, cloud_after, "edgecascade_batch_size_count", model="toy-cloud") <= 8
    assert value(cloud_after, "edgecascade_queue_depth", model="toy-cloud") == 0
    assert value(cloud_after, "edgecascade_model_version", model="text-cloud") == 1
    assert value(cloud_after, "edgecascade_daemon_info", daemon="cloud_router", id=next(
        dict(labels)["id"] for name, labels in cloud_after if name == "edgecascade_daemon_info")) == 1


def test_update_state_setter_and_metrics_endpoint_errors():
    metrics = RouterMetrics("r1")
    metrics.set_update_state("downloading", version=3)
    endpoint = MetricsEndpoint(metrics.registry, "127.0.0.1", 0)
    try:
        samples = scrape(endpoint.port)
        assert value(samples, "edgecascade_update_state", state="downloading") == 1
        assert value(samples, "edgecascade_update_state", state="active") == 0
        assert value(samples, "edgecascade_update_target_version") == 3
        with pytest.raises(ConfigError, match="metrics_port"):
            MetricsEndpoint(metrics.registry, "127.0.0.1", endpoint.port)
    finally:
        endpoint.close()
    with pytest.raises(EdgecascadeError, match="unknown update state"):
        metrics.set_update_state("exploded")
    assert [listen_host(a) for a in ("127.0.0.1:1", "[::]:1", ":1", "0.0.0.0:1")] == ["127.0.0.1", "::", "0.0.0.0", "0.0.0.0"]


# --- gRPC reflection --------------------------------------------------------------------------


def reflect(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
    (answer,) = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5))
    return answer


def pool_for_symbol(channel: grpc.Channel, symbol: str) -> descriptor_pool.DescriptorPool:
    """What grpcurl does: fetch the file defining `symbol` (with its imports) and build a pool."""
    answer = reflect(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
    pool = descriptor_pool.DescriptorPool()
    for raw in answer.file_descriptor_response.file_descriptor_proto:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
    return pool


def test_reflection_lists_describes_and_calls_services(daemons):
    own = {"edge": "edgecascade.v1.EdgeAgent", "cloud": "edgecascade.v1.CloudRouter"}
    for name, service in own.items():
        with grpc.insecure_channel(daemons[name].target) as channel:
            listed = reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
            names = {s.name for s in listed.list_services_response.service}
            assert names == {service, "inference.GRPCInferenceService", "grpc.health.v1.Health",
                             "grpc.reflection.v1alpha.ServerReflection"}
            described = pool_for_symbol(channel, service).FindServiceByName(service)
            update_rpcs = {"PublishUpdate", "GetUpdateNotice", "FetchPatchChunk", "ReportUpdateState", "GetRolloutStatus"}
            methods = {"Infer", "GetStatus", "Generate"} | ({"Heartbeat", "GetFleet"} | update_rpcs if name == "cloud" else set())
            assert {m.name for m in described.methods} == methods

            pool = pool_for_symbol(channel, "inference.GRPCInferenceService")
            kserve = pool.FindServiceByName("inference.GRPCInferenceService")
            assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"} <= {
                m.name for m in kserve.methods}
            # call a method knowing only what reflection said, as grpcurl does
            method = kserve.methods_by_name["ServerMetadata"]
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            call = channel.unary_unary(f"/{kserve.full_name}/{method.name}", request_serializer=request_class.SerializeToString,
                                       response_deserializer=response_class.FromString)
            assert call(request_class(), timeout=5).name.startswith("edgecascade-")
            health = health_pb2_grpc.HealthStub(channel)
            for checked in (service, "inference.GRPCInferenceService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=checked), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING


def test_stream_infer_goes_through_the_cascade(triton):
    answers: list = []
    done = threading.Event()

    def on_answer(result, error):
        answers.append((result, error))
        if len(answers) == 2:
            done.set()

    client = triton["edge"]
    client.start_stream(callback=on_answer)
    try:
        client.async_stream_infer("toy-edge", [fp32_input(UNSURE[None, :])], request_id="s1")
        client.async_stream_infer("toy-edge", [fp32_input(np.zeros((1, 4), np.float32))], request_id="s2")
        assert done.wait(timeout=10)
    finally:
        client.stop_stream()
    (result, error), (refused, refused_error) = answers
    assert error is None and result.as_numpy("served_by")[0].decode() == "cloud"
    assert refused is None and "INVALID_ARGUMENT" in str(refused_error)
