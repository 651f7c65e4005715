"""KServeServicer on a real grpc.aio server on loopback, driven by the stock tritonclient.

The backend here is a small real one (softmax over logits, text lengths), written for the
test; the daemons implement the same `KServeBackend` protocol over their models.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Iterator

import grpc
import numpy as np
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from protos import grpc_service_pb2 as pb  # noqa: E402
from protos import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from shared.errors import InvalidInputError, ModelNotFoundError, UnavailableError  # noqa: E402
from shared.kserve_backend import (  # noqa: E402
    InferenceRequest,
    InferenceResult,
    KServeBackend,
    ModelMetadata,
    ServerMetadata,
    TensorSpec,
)
from shared.kserve_codec import encode_bytes_elements  # noqa: E402
from shared.kserve_service import add_kserve_servicer  # noqa: E402

LABELS = np.array(["card", "refund", "transfer", "other"], dtype=object)
MODELS = {
    "softmax": ModelMetadata(
        name="softmax",
        versions=("1",),
        platform="numpy_test",
        inputs=(TensorSpec("LOGITS", "FP32", (-1, 4)),),
        outputs=(TensorSpec("PROBS", "FP32", (-1, 4)), TensorSpec("LABEL", "BYTES", (-1,))),
    ),
    "text_length": ModelMetadata(
        name="text_length",
        inputs=(TensorSpec("TEXT", "BYTES", (-1,)),),
        outputs=(TensorSpec("LENGTH", "INT64", (-1,)), TensorSpec("UPPER", "BYTES", (-1,))),
    ),
    "slow": ModelMetadata(name="slow", inputs=(TensorSpec("X", "FP32", (-1,)),), outputs=(TensorSpec("X", "FP32", (-1,)),)),
}


class NumpyBackend:
    """Three tiny real models; `ready` can be switched off to test UNAVAILABLE."""

    def __init__(self) -> None:
        self.ready = True
        self.seen: list[InferenceRequest] = []

    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self.ready

    def model_ready(self, name: str, version: str) -> bool:
        return self.ready and name in MODELS

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name="edgecascade-test", version="0.1.0", extensions=("schedule_policy",))

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        if name not in MODELS:
            raise ModelNotFoundError(f"model {name!r} is not served here; try {sorted(MODELS)}")
        return MODELS[name]

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        self.seen.append(request)
        self.model_metadata(request.model_name, request.model_version)
        if not self.ready:
            raise UnavailableError("models are still loading")
        if request.model_name == "slow":
            await asyncio.sleep(30)
        if request.model_name == "softmax":
            logits = request.inputs.get("LOGITS")
            if logits is None or logits.dtype != np.float32 or logits.ndim != 2 or logits.shape[1] != 4:
                raise InvalidInputError("model 'softmax' takes LOGITS, FP32 of shape [-1, 4]")
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = exp / exp.sum(axis=1, keepdims=True)
            return InferenceResult(
                outputs={"PROBS": probs.astype(np.float32), "LABEL": LABELS[probs.argmax(axis=1)]},
                model_version="1",
                parameters={"served_by": "edge"},
            )
        texts = request.inputs.get("TEXT")
        if texts is None or texts.dtype != object:
            raise InvalidInputError("model 'text_length' takes TEXT, BYTES of shape [-1]")
        flat = texts.ravel().tolist()
        return InferenceResult(
            outputs={
                "LENGTH": np.array([len(t) for t in flat], dtype=np.int64).reshape(texts.shape),
                "UPPER": np.array([t.upper() for t in flat], dtype=object).reshape(texts.shape),
            }
        )


def test_the_test_backend_satisfies_the_protocol():
    assert isinstance(NumpyBackend(), KServeBackend)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[NumpyBackend, str]]:
    """An aio server with the KServe servicer, on its own event loop in a background thread."""
    backend = NumpyBackend()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kserve-test-server", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        add_kserve_servicer(server, backend)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield backend, f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=None), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def client(served):
    backend, address = served
    backend.ready = True
    with tritonclient_grpc.InferenceServerClient(url=address) as triton:
        yield triton
    backend.ready = True


@pytest.fixture
def stub(served) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Our own generated stub, for requests tritonclient never builds (typed contents)."""
    with grpc.insecure_channel(served[1]) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def status_of(exc_info: pytest.ExceptionInfo) -> str:
    return exc_info.value.status()


def test_health_and_server_metadata(client, served):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("softmax")
    assert not client.is_model_ready("no_such_model")
    metadata = client.get_server_metadata()
    assert (metadata.name, metadata.version, list(metadata.extensions)) == ("edgecascade-test", "0.1.0", ["schedule_policy"])
    served[0].ready = False
    assert client.is_server_live()
    assert not client.is_server_ready()
    assert not client.is_model_ready("softmax")


def test_model_metadata_reports_tensors_with_dynamic_dimensions(client):
    metadata = client.get_model_metadata("softmax")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("softmax", ["1"], "numpy_test")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("LOGITS", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("PROBS", "FP32", [-1, 4]),
        ("LABEL", "BYTES", [-1]),
    ]
    as_json = client.get_model_metadata("text_length", as_json=True)
    assert as_json["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": ["-1"]}]


def test_infer_fp32_returns_softmax_and_labels(client, served):
    logits = np.array([[0.0, 3.0, 0.0, 0.0], [5.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    tensor = tritonclient_grpc.InferInput("LOGITS", list(logits.shape), "FP32")
    tensor.set_data_from_numpy(logits)
    result = client.infer("softmax", [tensor], request_id="req-1", priority=2, timeout=5_000_000)
    probs = result.as_numpy("PROBS")
    assert probs.dtype == np.float32 and probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert [label.decode() for label in result.as_numpy("LABEL")] == ["refund", "card"]
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("softmax", "1", "req-1")
    assert response.parameters["served_by"].string_param == "edge"
    assert len(response.raw_output_contents) == 2  # always raw
    seen = served[0].seen[-1]
    assert seen.priority == 2 and seen.request_id == "req-1" and seen.deadline_s is not None


def test_infer_bytes_text_round_trips(client):
    texts = np.array(["hello", "naïve café", ""], dtype=object)
    tensor = tritonclient_grpc.InferInput("TEXT", [3], "BYTES")
    tensor.set_data_from_numpy(texts)
    wanted = [tritonclient_grpc.InferRequestedOutput("UPPER")]
    result = client.infer("text_length", [tensor], outputs=wanted)
    assert [o.name for o in result.get_response().outputs] == ["UPPER"]
    assert [u.decode() for u in result.as_numpy("UPPER")] == ["HELLO", "NAÏVE CAFÉ", ""]
    assert result.as_numpy("LENGTH") is None
    lengths = client.infer("text_length", [tensor]).as_numpy("LENGTH")
    assert lengths.tolist() == [5, 10, 0]


def test_unknown_model_is_not_found(client):
    tensor = tritonclient_grpc.InferInput("LOGITS", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("no_such_model", [tensor])
    assert status_of(exc_info) == "StatusCode.NOT_FOUND"
    assert "no_such_model" in exc_info.value.message()
    with pytest.raises(InferenceServerException) as exc_info:
        client.get_model_metadata("no_such_model")
    assert status_of(exc_info) == "StatusCode.NOT_FOUND"


def test_not_ready_is_unavailable(client, served):
    served[0].ready = False
    tensor = tritonclient_grpc.InferInput("LOGITS", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("softmax", [tensor])
    assert status_of(exc_info) == "StatusCode.UNAVAILABLE"


def test_bad_tensors_are_invalid_argument(client):
    wrong_shape = tritonclient_grpc.InferInput("LOGITS", [1, 3], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3), np.float32))
    wrong_bytes = tritonclient_grpc.InferInput("LOGITS", [1, 4], "FP32")
    wrong_bytes.set_data_from_numpy(np.zeros((1, 4), np.float32))
    wrong_bytes.set_shape([2, 4])  # now the shape needs twice the data sent
    unknown_output = [tritonclient_grpc.InferRequestedOutput("NOPE")]
    ok = tritonclient_grpc.InferInput("LOGITS", [1, 4], "FP32")
    ok.set_data_from_numpy(np.zeros((1, 4), np.float32))
    cases = [
        ([wrong_shape], None, "shape [-1, 4]"),
        ([wrong_bytes], None, "16 bytes of raw content but shape [2, 4] of FP32 needs 32"),
        ([ok], unknown_output, "no output named ['NOPE']"),
    ]
    for inputs, outputs, message in cases:
        with pytest.raises(InferenceServerException) as exc_info:
            client.infer("softmax", inputs, outputs=outputs)
        assert status_of(exc_info) == "StatusCode.INVALID_ARGUMENT"
        assert message in exc_info.value.message()


def test_timeout_parameter_ends_a_slow_request_with_deadline_exceeded(client):
    tensor = tritonclient_grpc.InferInput("X", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("slow", [tensor], timeout=50_000)  # microseconds
    assert status_of(exc_info) == "StatusCode.DEADLINE_EXCEEDED"


def typed_request(**contents) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="softmax")
    tensor = request.inputs.add(name="LOGITS", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(contents.get("values", [0.0, 0.0, 2.0, 0.0]))
    return request


def test_typed_contents_are_accepted(stub):
    response = stub.ModelInfer(typed_request(), timeout=10)
    assert [o.name for o in response.outputs] == ["PROBS", "LABEL"]
    probs = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 4)
    assert probs.argmax() == 2
    assert response.raw_output_contents[1] == encode_bytes_elements(["transfer"])


def test_raw_and_typed_contents_together_are_invalid_argument(stub):
    request = typed_request()
    request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as exc_info:
        stub.ModelInfer(request, timeout=10)
    assert exc_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no input may also carry typed contents" in exc_info.value.details()


def test_stream_infer_answers_each_request_and_reports_errors_in_band(client):
    answers: list = []
    done = threading.Event()

    def on_answer(result, error):
        answers.append((result, error))
        if len(answers) == 2:
            done.set()

    good = tritonclient_grpc.InferInput("LOGITS", [1, 4], "FP32")
    good.set_data_from_numpy(np.array([[0, 0, 0, 9]], np.float32))
    client.start_stream(callback=on_answer)
    try:
        client.async_stream_infer("softmax", [good], request_id="a")
        client.async_stream_infer("no_such_model", [good], request_id="b")
        assert done.wait(timeout=10)
    finally:
        client.stop_stream()
    (result, error), (missing, missing_error) = answers
    assert error is None and [x.decode() for x in result.as_numpy("LABEL")] == ["other"]
    assert missing is None and "NOT_FOUND" in str(missing_error)
