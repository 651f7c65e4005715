"""Bytes that do not decode as the request message get INVALID_ARGUMENT on every service of
both daemons, with rate-limited log lines and no traceback; over-long echoed values are cut."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from protos import edgecascade_pb2, grpc_service_pb2
from protos import edgecascade_pb2 as pb
from protos import grpc_service_pb2 as kserve_pb
from shared.errors import ECHO_LIMIT_CHARS, echoed
from shared.undecodable_requests import RateLimitedLog
from tests.helpers.bundles import CONFIDENT

KSERVE = "inference.GRPCInferenceService"
EDGE_METHODS = ["edgecascade.v1.EdgeAgent/Infer", "edgecascade.v1.EdgeAgent/GetStatus",
                f"{KSERVE}/ModelInfer", f"{KSERVE}/ModelMetadata", f"{KSERVE}/ModelStreamInfer",
                "grpc.health.v1.Health/Check"]
ROUTER_METHODS = ["edgecascade.v1.CloudRouter/Infer", "edgecascade.v1.CloudRouter/Heartbeat",
                  "edgecascade.v1.CloudRouter/PublishUpdate", "edgecascade.v1.CloudRouter/GetUpdateNotice",
                  f"{KSERVE}/ModelInfer", f"{KSERVE}/ModelStreamInfer"]
#: Not a protobuf message of any type: field 0 is never valid.
RANDOM_BYTES = bytes.fromhex("00 9f 3a ff ff ff ff ff ff ff ff ff 01 7e")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field_bytes(descriptor, payload: bytes, depth: int = 2) -> bytes | None:
    """`payload` as the value of the first string field in `descriptor` (or in a message field
    of it, `depth` levels down), encoded by hand; None when there is none."""
    for field in descriptor.fields:
        tag = _varint(field.number << 3 | 2)
        if field.type == FieldDescriptor.TYPE_STRING:
            return tag + _varint(len(payload)) + payload
    if depth:
        for field in descriptor.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                inner = _string_field_bytes(field.message_type, payload, depth - 1)
                if inner is not None:
                    return _varint(field.number << 3 | 2) + _varint(len(inner)) + inner
    return None


def _method(path: str):
    from grpc_health.v1 import health_pb2

    service_name, method_name = path.split("/")
    for file in (edgecascade_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR):
        for service in file.services_by_name.values():
            if service.full_name == service_name:
                return service.methods_by_name[method_name]
    raise KeyError(path)


def _garbage(path: str) -> dict[str, bytes]:
    """Undecodable requests for the method: random bytes, a truncated message, bad UTF-8."""
    request_type = _method(path).input_type
    cases = {"random bytes": RANDOM_BYTES,
             "truncated": _varint(1 << 3 | 2) + _varint(40) + b"only ten b"}
    bad_utf8 = _string_field_bytes(request_type, b"caf\xc3\x28 \xff\xfe")
    if bad_utf8 is not None:
        cases["invalid UTF-8"] = bad_utf8
    from google.protobuf import message_factory

    message_class = message_factory.GetMessageClass(request_type)
    for case, raw in cases.items():
        with pytest.raises(DecodeError):
            message_class.FromString(raw)
        assert case  # every case really is undecodable for this type
    return cases


def _call(channel: grpc.Channel, path: str, raw: bytes) -> grpc.RpcError:
    method = _method(path)
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    callable_ = kind(f"/{path}", request_serializer=None, response_deserializer=None)
    request = iter([raw]) if method.client_streaming else raw
    with pytest.raises(grpc.RpcError) as info:
        result = callable_(request, timeout=5)
        if method.server_streaming:
            list(result)
    return info.value


def _check_daemon(daemon, methods: list[str]) -> int:
    sent = 0
    with grpc.insecure_channel(daemon.target) as channel:
        for path in methods:
            for case, raw in _garbage(path).items():
                error = _call(channel, path, raw)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, case, error.code(), error.details())
                assert "undecodable request" in error.details(), (path, case, error.details())
                sent += 1
        # still serving, and a decodable request is not disturbed
        stub = channel.unary_unary("/edgecascade.v1.EdgeAgent/Infer" if "EdgeAgent/Infer" in methods[0] else
                                   "/edgecascade.v1.CloudRouter/Infer",
                                   request_serializer=pb.InferRequest.SerializeToString,
                                   response_deserializer=pb.InferResponse.FromString)
        request = pb.InferRequest(tensor=pb.Tensor(dtype="float32", shape=[3], data=CONFIDENT.tobytes()))
        assert stub(request, timeout=5).label_name
    return sent


@pytest.mark.parametrize("which", ["edge", "cloud"])
def test_undecodable_requests_are_invalid_argument_on_every_service(edge_daemon, cloud_daemon, which):
    daemon, methods = (edge_daemon, EDGE_METHODS) if which == "edge" else (cloud_daemon, ROUTER_METHODS)
    sent = _check_daemon(daemon, methods)
    log_text = daemon.logs()
    assert "Traceback" not in log_text
    refused_lines = [line for line in log_text.splitlines() if "undecodable request" in line]
    assert 1 <= len(refused_lines) < sent, f"{len(refused_lines)} log lines for {sent} undecodable requests"


def test_rate_limited_log_counts_what_it_left_out(caplog):
    import logging

    now = [0.0]
    logger = logging.getLogger("test.rate_limited")
    line = RateLimitedLog(logger, interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rate_limited"):
        for _ in range(5):
            line.warning("bad %s", "thing")
        now[0] = 11.0
        line.warning("bad %s", "thing")
    assert [r.getMessage() for r in caplog.records] == ["bad thing", "bad thing (and 4 more in the last 10 s)"]


def test_long_model_name_gets_not_found_with_a_short_message(edge_daemon, cloud_daemon):
    name = "m" * 10_000
    tensor = pb.Tensor(dtype="float32", shape=[3], data=CONFIDENT.tobytes())
    for target, path in ((edge_daemon.target, "edgecascade.v1.EdgeAgent/Infer"),
                         (cloud_daemon.target, "edgecascade.v1.CloudRouter/Infer")):
        with grpc.insecure_channel(target) as channel:
            infer = channel.unary_unary(f"/{path}", request_serializer=pb.InferRequest.SerializeToString,
                                        response_deserializer=pb.InferResponse.FromString)
            with pytest.raises(grpc.RpcError) as info:
                infer(pb.InferRequest(model=name, tensor=tensor), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()[:200]
            assert "mmmm" in info.value.details() and len(info.value.details()) < 400
            kserve = channel.unary_unary(f"/{KSERVE}/ModelMetadata",
                                         request_serializer=kserve_pb.ModelMetadataRequest.SerializeToString,
                                         response_deserializer=kserve_pb.ModelMetadataResponse.FromString)
            with pytest.raises(grpc.RpcError) as info:
                kserve(kserve_pb.ModelMetadataRequest(name=name), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()[:200]
            assert len(info.value.details()) < 400


def test_echoed_cuts_long_values():
    assert echoed("abc") == "'abc'"
    long = echoed("x" * 10_000)
    assert len(long) < ECHO_LIMIT_CHARS + 40 and long.endswith("(10000 characters)")
