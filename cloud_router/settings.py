"""Settings of the cloud router (env prefix `EDGECASCADE_ROUTER_`, or a YAML file)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Optional

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGECASCADE_ROUTER_", extra="forbid")

    router_id: str = Field(default_factory=lambda: f"router-{socket.gethostname()}")
    """Name this replica reports in status and metrics."""
    listen: str = "127.0.0.1:50051"
    """host:port of the gRPC server (edgecascade.v1 CloudRouter, health, KServe v2)."""
    model_dirs: list[Path] = Field(default_factory=list)
    """Model bundles to host (directories holding model.json). The first is the default."""
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Largest batch the dynamic batcher forms."""
    max_delay_ms: float = Field(default=5.0, ge=0.0, le=10_000.0)
    """How long the batcher waits for a batch to fill after its first request arrives."""
    max_queue: int = Field(default=1024, ge=1)
    """Queued requests per model beyond which new ones get RESOURCE_EXHAUSTED."""
    batching: bool = True
    """False serves each request alone (max_batch_size 1, no delay): the unbatched baseline."""
    default_timeout_ms: float = Field(default=5_000.0, gt=0)
    """Deadline for a request that carries none."""
    max_timeout_ms: float = Field(default=600_000.0, gt=0)
    """Longer deadlines are refused as absurd (INVALID_ARGUMENT)."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest gRPC message accepted or sent; larger requests get RESOURCE_EXHAUSTED."""
    redis_url: Optional[str] = None
    """None: the in-memory scheduler (single node). Set it to scale out over Redis Streams."""
    metrics_port: Optional[int] = None
    """Port of the Prometheus /metrics endpoint; None disables it."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish."""
