"""edgecascade: edge-cloud cascade inference.

Applications need one line:

    from edgecascade import Client          # or AsyncClient
"""

from shared.errors import (
    ConfigError,
    DeadlineError,
    EdgecascadeError,
    InvalidInputError,
    ModelError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
)
from shared.sdk import AsyncClient, Client, InferResult, RetryPolicy
from shared.tls import ClientSecurity

__all__ = [
    "AsyncClient", "Client", "ClientSecurity", "InferResult", "RetryPolicy",
    "EdgecascadeError", "InvalidInputError", "ModelNotFoundError", "OverloadedError",
    "DeadlineError", "UnavailableError", "ModelError", "ConfigError",
    "RateLimitedError", "UnauthenticatedError", "PermissionDeniedError",
]
