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


class CloudBudgetError(OverloadedError):
    """The cloud budget (deferrals per second, per agent or fleet-wide) is spent for now."""


class TooManyAgentsError(OverloadedError):
    """The router already keeps update records of `update_max_agents` agents: a poll or report
    from an agent it has no record of is refused until records of silent agents expire
    (`update_agent_record_ttl_s`). Agents it has a record of are served as before."""


class RateLimitedError(OverloadedError):
    """This caller is over its share of the router (concurrent calls or calls per second);
    `retry_after_s` says when to try again (trailing metadata `RETRY_AFTER_MS_KEY`)."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnauthenticatedError(EdgecascadeError):
    """The call carried no credentials, or ones this daemon does not accept."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(EdgecascadeError):
    """The caller's credentials are valid but its roles do not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


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
    """A model update failed verification and was not installed.

    Each subclass is one reason; `reason` is a stable string for logs, metrics and fleet status.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason: str = "rejected"


class BadSignatureError(UpdateRejectedError):
    """The manifest signature does not verify against the pinned public key."""

    reason = "bad_signature"


class BadManifestError(UpdateRejectedError):
    """The manifest is signed but is not a valid manifest (bad JSON or field)."""

    reason = "bad_manifest"


class WrongModelError(UpdateRejectedError):
    """The manifest is for another model than the one it was offered for."""

    reason = "wrong_model"


class ExpiredUpdateError(UpdateRejectedError):
    """The manifest's expiry time has passed."""

    reason = "expired"


class StaleVersionError(UpdateRejectedError):
    """The version is not above the active one and the manifest is not a signed rollback."""

    reason = "stale_version"


class OversizedPatchError(UpdateRejectedError):
    """More patch bytes arrived than the manifest states."""

    reason = "oversized_patch"


class TruncatedPatchError(UpdateRejectedError):
    """Fewer patch bytes arrived than the manifest states."""

    reason = "truncated_patch"


class CorruptPatchError(UpdateRejectedError):
    """Patch bytes do not match the manifest's hashes, or do not decode."""

    reason = "corrupt_patch"


class WrongBaseError(UpdateRejectedError):
    """The file on disk is not the base the patch was made against."""

    reason = "wrong_base"


class ApplyFailedError(UpdateRejectedError):
    """The child process applying the patch crashed or ran out of time."""

    reason = "apply_failed"


class ResultHashMismatchError(UpdateRejectedError):
    """The patched file does not hash to the manifest's target SHA-256."""

    reason = "result_hash_mismatch"


class GoldenMismatchError(UpdateRejectedError):
    """The new model's outputs on the golden inputs are outside the tolerance."""

    reason = "golden_mismatch"


class ModelLoadFailedError(UpdateRejectedError):
    """The patched model does not load or does not run (its file hash was right)."""

    reason = "load_failed"


class UpdateNotFoundError(EdgecascadeError):
    """The router holds no published update with that id (never published, or replaced)."""

    code = grpc.StatusCode.NOT_FOUND


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
        UnauthenticatedError,
        PermissionDeniedError,
    )
}


#: The most characters of a caller's value that an error message quotes. gRPC carries the
#: message in a header (8 KiB by default), so a longer one reaches the caller as
#: RESOURCE_EXHAUSTED instead of the error meant for it.
ECHO_LIMIT_CHARS = 64

#: The most characters of a whole error message sent to a caller (`shared.grpc_errors`).
MESSAGE_LIMIT_CHARS = 1024


def echoed(value: object, limit_chars: int = ECHO_LIMIT_CHARS) -> str:
    """`repr(value)` for an error message, cut to `limit_chars` with the full length noted.
    Every value a caller sent that an error message quotes goes through this."""
    text = repr(value)
    if len(text) <= limit_chars:
        return text
    size = f"{len(value)} characters" if isinstance(value, (str, bytes)) else f"{len(text)} characters as text"
    return f"{text[:limit_chars]}... ({size})"


def clipped(message: str, limit_chars: int = MESSAGE_LIMIT_CHARS) -> str:
    """`message` cut to `limit_chars`: the last guard before it goes into a gRPC status."""
    return message if len(message) <= limit_chars else f"{message[:limit_chars]}... ({len(message)} characters)"


#: Trailing-metadata key naming the error class of a failed call (see `shared.grpc_errors`).
ERROR_CLASS_KEY = "edgecascade-error"
#: Trailing-metadata key of a RESOURCE_EXHAUSTED answer's retry hint, in milliseconds.
RETRY_AFTER_MS_KEY = "retry-after-ms"


def error_for_code(code: grpc.StatusCode, message: str) -> EdgecascadeError:
    """The typed error a client raises for a gRPC status (the inverse of `.code`)."""
    return _BY_CODE.get(code, EdgecascadeError)(message)


def error_named(class_name: str, message: str) -> EdgecascadeError:
    """The typed error whose class is called `class_name` (from a reply or trailer); the base
    class when no edgecascade error has that name."""
    pending = [EdgecascadeError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == class_name:
            return cls(message)
        pending.extend(cls.__subclasses__())
    return EdgecascadeError(message)
