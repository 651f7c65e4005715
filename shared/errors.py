"""The one error hierarchy of edgecascade, and its single mapping to gRPC status codes.

Servers raise these; `shared.grpc_errors` turns them into gRPC statuses; the SDK turns
statuses back into the same classes. Nothing else in the code base maps codes.
"""

from __future__ import annotations

import grpc


class EdgecascadeError(Exception):
    """Base of every error edgecascade raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInputError(EdgecascadeError):
    """The request is malformed: bad dtype, shape, byte length, empty input, bad deadline."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(EdgecascadeError):
    """The request names a model this server does not host."""

    code = grpc.StatusCode.NOT_FOUND


class OverloadedError(EdgecascadeError):
    """A queue or budget is full; retry later or answer locally."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineError(EdgecascadeError):
    """The request's deadline passed before it could be served."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(EdgecascadeError):
    """The server is not ready, is shutting down, or a dependency is unreachable."""

    code = grpc.StatusCode.UNAVAILABLE


class ModelError(EdgecascadeError):
    """The model itself failed while computing a batch."""

    code = grpc.StatusCode.INTERNAL


class ConfigError(EdgecascadeError):
    """A config, policy or model file is invalid. Raised at start-up, never per request."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UpdateRejectedError(EdgecascadeError):
    """A model update failed verification and was not installed."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class CalibrationError(EdgecascadeError):
    """The held-out data cannot certify a deferral threshold (too few examples, risk too high)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


_BY_CODE: dict[grpc.StatusCode, type[EdgecascadeError]] = {
    cls.code: cls
    for cls in (
        InvalidInputError,
        ModelNotFoundError,
        OverloadedError,
        DeadlineError,
        UnavailableError,
        ModelError,
        ConfigError,
    )
}


def error_for_code(code: grpc.StatusCode, message: str) -> EdgecascadeError:
    """The typed error a client raises for a gRPC status (the inverse of `.code`)."""
    return _BY_CODE.get(code, EdgecascadeError)(message)
