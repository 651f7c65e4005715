"""Every bad request gets a clear INVALID_ARGUMENT (or RESOURCE_EXHAUSTED), and the daemon keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from edgecascade import Client
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from tests.helpers.bundles import CONFIDENT

TENSOR_OK = pb.Tensor(dtype="float32", shape=[3], data=CONFIDENT.tobytes())

BAD_REQUESTS = {
    "wrong dtype": (pb.InferRequest(tensor=pb.Tensor(dtype="int32", shape=[3], data=np.zeros(3, np.int32).tobytes())), "dtype float32"),
    "unsupported dtype": (pb.InferRequest(tensor=pb.Tensor(dtype="complex64", shape=[3], data=b"x" * 24)), "not supported"),
    "wrong shape": (pb.InferRequest(tensor=pb.Tensor(dtype="float32", shape=[4], data=np.zeros(4, np.float32).tobytes())), "shape [3]"),
    "empty tensor": (pb.InferRequest(tensor=pb.Tensor(dtype="float32", shape=[0], data=b"")), "empty"),
    "no input": (pb.InferRequest(), "no input"),
    "empty text": (pb.InferRequest(text="   "), "empty"),
    "byte length mismatch": (pb.InferRequest(tensor=pb.Tensor(dtype="float32", shape=[3], data=b"\0" * 10)), "10 bytes"),
    "negative deadline": (pb.InferRequest(tensor=TENSOR_OK, timeout_ms=-5), "timeout_ms"),
    "absurd deadline": (pb.InferRequest(tensor=TENSOR_OK, timeout_ms=1e12), "beyond the limit"),
    "nan input": (pb.InferRequest(tensor=pb.Tensor(dtype="float32", shape=[3], data=np.array([np.nan, 0, 0], np.float32).tobytes())), "NaN"),
    "text to a tensor model": (pb.InferRequest(text="hello"), "takes a float32 tensor"),
}


@pytest.mark.parametrize("stub_name", ["EdgeAgentStub", "CloudRouterStub"])
def test_bad_requests_are_invalid_argument(edge_daemon, cloud_daemon, stub_name):
    target = edge_daemon.target if stub_name == "EdgeAgentStub" else cloud_daemon.target
    with grpc.insecure_channel(target) as channel:
        stub = getattr(pb_grpc, stub_name)(channel)
        for case, (request, expected) in BAD_REQUESTS.items():
            with pytest.raises(grpc.RpcError) as info:
                stub.Infer(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert expected in info.value.details(), (case, info.value.details())
        # unknown model
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(pb.InferRequest(model="nope", tensor=TENSOR_OK), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in info.value.details()
        # absurd gRPC deadline (a year)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(pb.InferRequest(tensor=TENSOR_OK), timeout=365 * 86400)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # still serving
        assert stub.Infer(pb.InferRequest(tensor=TENSOR_OK), timeout=5).label_name in {"a", "b"}


def test_oversized_message_is_resource_exhausted(tmp_path, bundles):
    from edgecascade.processes import InProcessDaemon

    with InProcessDaemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": None, "max_message_bytes": 4096}, tmp_path) as edge:
        with grpc.insecure_channel(edge.target) as channel:
            stub = pb_grpc.EdgeAgentStub(channel)
            big = np.zeros(10_000, np.float32)
            with pytest.raises(grpc.RpcError) as info:
                stub.Infer(pb.InferRequest(tensor=pb.Tensor(dtype="float32", shape=[10_000], data=big.tobytes())), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.Infer(pb.InferRequest(tensor=TENSOR_OK), timeout=5).served_by == pb.EDGE


def test_sdk_raises_typed_errors(edge_daemon):
    from edgecascade import InvalidInputError, ModelNotFoundError

    with Client(edge_daemon.target) as client:
        with pytest.raises(InvalidInputError, match="shape"):
            client.infer(np.zeros(5, np.float32))
        with pytest.raises(ModelNotFoundError):
            client.infer(CONFIDENT, model="other")
        with pytest.raises(InvalidInputError, match="timeout_s"):
            client.infer(CONFIDENT, timeout_s=-1)


def test_sdk_retries_unavailable_then_gives_up():
    from edgecascade import RetryPolicy, UnavailableError
    from edgecascade.processes import free_port

    with Client(f"127.0.0.1:{free_port()}", retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01)) as client:
        with pytest.raises(UnavailableError):
            client.infer(CONFIDENT, timeout_s=2.0)
