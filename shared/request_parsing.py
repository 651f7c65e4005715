"""What both servicers do to an incoming `InferRequest`: decode the input, fix the deadline."""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from protos import edgecascade_pb2 as pb
from shared.errors import InvalidInputError
from shared.model import ModelInput
from shared.tensor_codec import from_proto

#: gRPC metadata key an edge agent sets on its cloud calls, naming itself (cloud budget).
AGENT_ID_KEY = "edgecascade-agent-id"


def decode_input(request: pb.InferRequest) -> ModelInput:
    kind = request.WhichOneof("input")
    if kind == "tensor":
        return from_proto(request.tensor)
    if kind == "text":
        if not request.text.strip():
            raise InvalidInputError("text input is empty")
        return request.text
    raise InvalidInputError("request has no input: set `tensor` or `text`")


def request_deadline_s(
    timeout_ms: float,
    grpc_remaining_s: Optional[float],
    *,
    default_timeout_ms: float,
    max_timeout_ms: float,
    now_s: Optional[float] = None,
) -> float:
    """Absolute deadline (`shared.deadlines`: the monotonic clock): the earlier of the request's `timeout_ms` and the
    gRPC deadline, or the default. Negative, NaN or absurdly long budgets are refused."""
    now_s = time.monotonic() if now_s is None else now_s
    if timeout_ms != timeout_ms or timeout_ms < 0:  # NaN or negative
        raise InvalidInputError(f"timeout_ms must be >= 0, got {timeout_ms}")
    if timeout_ms > max_timeout_ms:
        raise InvalidInputError(f"timeout_ms {timeout_ms:g} is beyond the limit of {max_timeout_ms:g} ms")
    budgets_s = []
    if timeout_ms > 0:
        budgets_s.append(timeout_ms / 1000.0)
    if grpc_remaining_s is not None:
        if grpc_remaining_s * 1000.0 > max_timeout_ms:
            raise InvalidInputError(
                f"gRPC deadline {grpc_remaining_s:.0f} s is beyond the limit of {max_timeout_ms / 1000.0:g} s"
            )
        budgets_s.append(grpc_remaining_s)
    budget_s = min(budgets_s) if budgets_s else default_timeout_ms / 1000.0
    return now_s + budget_s


def call_deadline_s(request: Any, context: Any, settings: Any) -> float:
    """`request_deadline_s` for an RPC: the request's `timeout_ms`, the call's gRPC deadline
    (`context`), and the daemon's `default_timeout_ms` and `max_timeout_ms` (`settings`)."""
    return request_deadline_s(request.timeout_ms, context.time_remaining(),
                              default_timeout_ms=settings.default_timeout_ms, max_timeout_ms=settings.max_timeout_ms)


def request_id_of(request: pb.InferRequest) -> str:
    if len(request.request_id) > 128:
        raise InvalidInputError("request_id is longer than 128 characters")
    return request.request_id or os.urandom(16).hex()  # 128 random bits, like uuid4().hex at a quarter of the cost


def agent_id_of(metadata) -> str:
    """The deferring agent's id from a call's invocation metadata ("" for direct callers)."""
    for key, value in metadata or ():
        if key == AGENT_ID_KEY:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""
