"""Settings of the edge agent (env prefix `EDGECASCADE_EDGE_`, or a YAML file)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.listen import ListenAddress
from shared.security_settings import CloudLinkSecuritySettings, ServerSecuritySettings
from shared.settings import DaemonSettings


class EdgeSettings(DaemonSettings, ServerSecuritySettings, CloudLinkSecuritySettings):
    """Fields both daemons share: shared/settings.py. Security fields (TLS, tokens, plaintext,
    max_concurrent_rpcs, cloud_tls_*): shared/security_settings.py."""

    model_config = SettingsConfigDict(env_prefix="EDGECASCADE_EDGE_", extra="forbid")

    agent_id: str = Field(default_factory=lambda: f"edge-{socket.gethostname()}-{os.getpid()}")
    """Name this agent reports to the fleet registry and in metrics."""
    listen: ListenAddress = "127.0.0.1:50061"
    """host:port of the agent's gRPC server (edgecascade.v1 EdgeAgent, health, KServe v2)."""
    bundle_dir: Optional[Path] = None
    """The edge classifier bundle (model.json, model.onnx, policy.json) served by Infer and
    KServe. None (only with llm_dir): a language-model-only agent, whose Infer and KServe
    answer NOT_FOUND; it sends no heartbeat and takes no model updates."""
    policy_file: Optional[Path] = None
    """Deferral policy; defaults to policy.json inside bundle_dir."""
    providers: list[str] = Field(default_factory=lambda: ["cpu"])
    """ONNX Runtime execution providers in order of preference: tensorrt, cuda, cpu."""
    llm_dir: Optional[Path] = None
    """An `edgecascade export-llm` directory served by Generate (its llm_policy.json, when there
    is one, decides deferral to the cloud's language model). None: no language model."""
    llm_cloud_model: str = ""
    """The router language model deferred generations go to ("" = the router's default)."""
    llm_max_concurrent: int = Field(default=2, ge=1, le=64)
    """Generations decoding on the edge at once."""
    openai_listen: Optional[str] = None
    """host:port of the OpenAI-compatible HTTP endpoint (/v1/models, /v1/completions,
    /v1/chat/completions) for the language model; None: off. Needs llm_dir."""
    openai_timeout_s: float = Field(default=60.0, gt=0)
    """Deadline of one request on the OpenAI-compatible endpoint."""
    cloud_target: Optional[str] = "127.0.0.1:50051"
    """host:port of the cloud router; None runs edge-only (every deferral falls back)."""
    cloud_model: str = ""
    """Model name to ask the router for; empty means the router's default model."""
    default_timeout_ms: float = Field(default=2_000.0, gt=0)
    """Deadline for a request that carries none."""
    fallback_reserve_ms: float = Field(default=15.0, ge=0)
    """Time kept back from the cloud call so the fallback answer still meets the deadline."""
    breaker_failure_threshold: int = Field(default=5, ge=1)
    """Consecutive cloud failures that open the circuit breaker."""
    breaker_cooldown_s: float = Field(default=2.0, gt=0)
    """How long the breaker stays open before it lets one trial request through."""
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    """How often the agent reports its status to the router (fleet registry) and reads the
    cloud's pressure back. Only with a cloud_target."""
    pressure_stale_s: float = Field(default=10.0, gt=0)
    """Without a heartbeat answer for this long, the agent forgets the last pressure (back to 0)."""
    shed_at_pressure: Optional[float] = Field(default=1.0, gt=0, le=1.0)
    """At or above this pressure the cloud is saturated: deferrals are answered locally, flagged
    edge_fallback / pressure. None: always defer (only the threshold shifts)."""
    update_public_key: Optional[Path] = None
    """Ed25519 public key (PEM) that model-update manifests must verify against. None turns
    updates off; set it (with state_dir and a cloud_target) to take signed delta updates."""
    state_dir: Optional[Path] = None
    """The updater's own directory: installed versions, the `current` pointer, downloads. At the
    first start it is seeded from bundle_dir; afterwards the agent serves `current` from it."""
    update_poll_interval_s: float = Field(default=30.0, gt=0)
    """How often the agent asks the router whether an update is waiting for it."""
    update_health_window_s: float = Field(default=30.0, gt=0)
    """After a swap the new model is on probation this long, or until it has served
    update_health_requests requests; one model error in that window rolls it back."""
    update_health_requests: int = Field(default=100, ge=1)
    """Requests the new model must serve without an error to pass the health window early."""
    update_apply_priority: Literal["idle", "low", "normal"] = "idle"
    """CPU priority of the child process that applies a patch. `idle` (Linux SCHED_IDLE) runs it
    only on CPU time serving leaves over, so on a board busy for the whole apply timeout the
    update fails as apply_failed; `low` is nice 10; `normal` competes with serving."""
    update_apply_worker: Literal["resident", "per_update"] = "resident"
    """`resident`: the apply child starts with the updater and waits, idle, for updates (about
    45 MB resident here; no Python start-up while an update runs beside serving). `per_update`:
    a new child for each update (no memory held between updates; each update pays a Python
    start-up, about 0.4 s of CPU, which showed up as a p99 tail during swaps)."""

    @model_validator(mode="after")
    def _serves_a_model(self) -> "EdgeSettings":
        if self.bundle_dir is None and self.llm_dir is None:
            raise ValueError("set bundle_dir (a classifier bundle), llm_dir (a language model from export-llm), "
                             "or both: the agent has nothing to serve")
        if self.bundle_dir is None and self.policy_file is not None:
            raise ValueError("policy_file is set but bundle_dir is not: a deferral policy belongs to a classifier bundle")
        return self

    @model_validator(mode="after")
    def _updates_need_state_dir(self) -> "EdgeSettings":
        if self.update_public_key is not None and self.bundle_dir is None:
            raise ValueError("update_public_key is set but bundle_dir is not: model updates replace the classifier "
                             "bundle, and a language-model-only agent has none")
        if self.update_public_key is not None and self.state_dir is None:
            raise ValueError("update_public_key is set but state_dir is not: the updater needs a directory of its own")
        return self
