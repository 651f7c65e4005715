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
    UnavailableError,
)
from shared.sdk import AsyncClient, Client, InferResult, RetryPolicy

__all__ = [
    "AsyncClient", "Client", "InferResult", "RetryPolicy",
    "EdgecascadeError", "InvalidInputError", "ModelNotFoundError", "OverloadedError",
    "DeadlineError", "UnavailableError", "ModelError", "ConfigError",
]
