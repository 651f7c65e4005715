"""Settings of the cloud router (env prefix `EDGECASCADE_ROUTER_`, or a YAML file)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from cloud_router.limits import ClientLimitSettings
from shared.listen import ListenAddress
from shared.security_settings import ServerSecuritySettings
from shared.settings import DaemonSettings


class RouterSettings(DaemonSettings, ServerSecuritySettings, ClientLimitSettings):
    """Fields both daemons share: shared/settings.py. Security fields (TLS, tokens, plaintext,
    max_concurrent_rpcs): shared/security_settings.py; per-client limits (client_*):
    cloud_router/limits.py."""

    model_config = SettingsConfigDict(env_prefix="EDGECASCADE_ROUTER_", extra="forbid")

    router_id: str = Field(default_factory=lambda: f"router-{socket.gethostname()}")
    """Name this replica reports in status and metrics."""
    listen: ListenAddress = "127.0.0.1:50051"
    """host:port of the gRPC server (edgecascade.v1 CloudRouter, health, KServe v2)."""
    model_dirs: list[Path] = Field(default_factory=list)
    """Classifier bundles to host (directories holding model.json). The first is the default.
    May be empty when llm_dirs or llm_remote_url is set: a language-model-only router (the
    daemon refuses to start with none of the three)."""
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Largest batch the dynamic batcher forms."""
    max_delay_ms: float = Field(default=5.0, ge=0.0, le=10_000.0)
    """How long the batcher waits for a batch to fill after its first request arrives."""
    max_queue: int = Field(default=1024, ge=1)
    """Queued requests per model beyond which new ones get RESOURCE_EXHAUSTED."""
    batching: bool = True
    """False serves each request alone (max_batch_size 1, no delay): the unbatched baseline."""
    llm_dirs: list[Path] = Field(default_factory=list)
    """Causal-LM checkpoints (Hugging Face directories) served by Generate; the first is the default.
    Loaded with transformers' AutoModelForCausalLM (Ernie4_5ForCausalLM, Ernie4_5_MoeForCausalLM, ...)."""
    llm_remote_url: Optional[str] = None
    """Base URL of an OpenAI-compatible engine (vLLM, SGLang, TGI, llama.cpp, Ollama,
    `transformers serve`), e.g. http://10.0.0.5:8000/v1, served by Generate like a local
    checkpoint; its API key comes from EDGECASCADE_LLM_API_KEY. None: no remote model."""
    llm_remote_model: str = ""
    """The model name to ask the remote engine for (required with llm_remote_url)."""
    llm_remote_name: str = ""
    """The name edge agents use for it ("" = llm_remote_model). Listed after the llm_dirs models."""
    llm_max_batch_size: int = Field(default=8, ge=1, le=256)
    """Most generations decoded together (1 when batching is off)."""
    llm_max_delay_ms: float = Field(default=5.0, ge=0.0, le=10_000.0)
    """How long a generation batch waits to fill after its first request."""
    llm_continuous_batching: bool = True
    """True: a generation that arrives while a batch decodes joins it between two decode steps
    (while it has fewer than llm_max_batch_size rows), so its first token does not wait for the
    batch to end. False, or a model whose KV cache cannot be joined (sliding-window, hybrid; the
    router logs it at load): it waits for the running batch to finish (static batching)."""
    default_timeout_ms: float = Field(default=5_000.0, gt=0)
    """Deadline for a request that carries none."""
    redis_url: Optional[str] = None
    """None: the in-memory scheduler (single node). Set it to scale out over Redis Streams
    (redis://, rediss://, unix://, redis+cluster://, redis+sentinel://; see
    cloud_router/redis_connection.py)."""
    role: Literal["all", "frontend", "worker"] = "all"
    """With Redis: `frontend` queues requests, `worker` computes them, `all` does both. Without
    Redis only `all` exists. A worker-only replica serves health and status but refuses Infer."""
    redis_prefix: str = Field(default="edgecascade", min_length=1)
    """Prefix of every Redis key (cloud_router/redis_keys.py); routers sharing one prefix share work."""
    redis_startup_wait_s: float = Field(default=5.0, ge=0)
    """How long start-up waits for Redis to answer before it fails with the (password-free) URL."""
    redis_worker_ttl_ms: int = Field(default=300, ge=50, le=60_000)
    """Each worker refreshes a liveness key every third of this. Once the key of a worker that
    holds entries has expired (the worker died or lost Redis), a live worker takes those entries
    over at once (XCLAIM), so a dead worker's work is answered within a 1 s deadline. Keep it
    above the longest pause of a worker's event loop (the model runs off the loop), or a live
    worker's batch is sometimes computed twice (harmless, wasted)."""
    redis_claim_idle_ms: int = Field(default=2_000, ge=10)
    """A worker also takes over entries another worker, alive or not, has held unacknowledged this
    long (XAUTOCLAIM): a stuck worker. Keep it above the longest batch time, or slow batches get
    computed twice (harmless, wasted)."""
    redis_max_deliveries: int = Field(default=3, ge=1)
    """Entries delivered more often than this without an acknowledgement go to the dead-letter stream."""
    redis_stream_max_len: int = Field(default=100_000, ge=100)
    """Approximate cap on each work stream (XADD MAXLEN ~), so Redis memory stays bounded."""
    redis_block_ms: int = Field(default=100, ge=10, le=4_000)
    """How long a worker's read blocks when there is no work. An idle worker looks for a dead
    peer's entries only between reads, so this adds to the takeover time."""
    pressure_saturation_wait_ms: float = Field(default=500.0, gt=0)
    """Expected queueing wait that counts as saturated (pressure 1); see cloud_router/pressure.py."""
    pressure_interval_ms: float = Field(default=200.0, ge=10)
    """How often a front end measures and publishes each model's pressure (Redis mode)."""
    fleet_ttl_s: float = Field(default=10.0, gt=0)
    """A fleet registry entry expires this long after its agent's last heartbeat."""
    cloud_budget_agent_rps: Optional[float] = Field(default=None, gt=0)
    """Cloud budget per agent, deferrals per second (token bucket); None: no per-agent budget."""
    cloud_budget_fleet_rps: Optional[float] = Field(default=None, gt=0)
    """Cloud budget for the whole fleet, deferrals per second; None: no fleet-wide budget."""
    cloud_budget_burst_s: float = Field(default=1.0, gt=0)
    """A budget's bucket holds this many seconds' worth of deferrals (at least one)."""
    update_public_key: Optional[Path] = None
    """Ed25519 public key (PEM) of model updates. When set (and update_check_uploads is on), a
    published update whose manifest does not verify is refused at once. Agents verify every
    update themselves either way."""
    update_check_uploads: bool = True
    """Check each published update (manifest fields, expiry, payload length and hashes) before
    offering it. Off only in fault tests, where the router plays a faulty relay."""
    update_agent_ttl_s: float = Field(default=120.0, gt=0)
    """An agent that has not polled for updates this long no longer counts when canaries are picked."""
    update_agent_record_ttl_s: float = Field(default=86_400.0, gt=0)
    """The router drops its update record of an agent (a row of `update status`) once that agent
    has not polled or reported for this long; if it comes back, it is a new agent. The canaries
    of a rollout still in its canary phase are kept. With `update_store_dir` the silence counts
    from the router's start at the latest (a restart gives every stored record this long again)."""
    update_max_agents: int = Field(default=10_000, ge=1)
    """Most agents the router keeps update records of. Beyond it a poll or report from a new agent
    id is refused with RESOURCE_EXHAUSTED (TooManyAgentsError) until records expire; agents that
    have a record keep working. Raise it for a larger fleet."""
    update_store_dir: Optional[Path] = None
    """Directory where published updates (manifest and payload) and the rollout state are kept,
    so they survive a restart; reloaded and checked again at start. One router per directory.
    None: in memory only, so a restart loses them (publish again), or in Redis with
    update_state_in_redis."""
    update_state_in_redis: bool = False
    """Keep published updates, rollouts and agent records in Redis (`redis_url`, keys under
    `redis_prefix`), shared by every replica using that Redis and prefix, so an agent or operator
    may reach any replica. Needs `redis_url` (one server or Sentinel, not Cluster); excludes
    `update_store_dir`."""

    @model_validator(mode="after")
    def _role_needs_redis(self) -> "RouterSettings":
        if self.role != "all" and not self.redis_url:
            raise ValueError(f"role {self.role!r} needs redis_url (without Redis a router is always role 'all')")
        return self

    @model_validator(mode="after")
    def _update_state_in_one_place(self) -> "RouterSettings":
        if not self.update_state_in_redis:
            return self
        if not self.redis_url:
            raise ValueError("update_state_in_redis needs redis_url (the Redis that keeps the update state)")
        if self.update_store_dir is not None:
            raise ValueError("set update_store_dir or update_state_in_redis, not both: the update state lives in "
                             "one place (a directory for one router, or Redis for all replicas)")
        if "+cluster://" in self.redis_url.lower():
            raise ValueError("update_state_in_redis needs one Redis server or Sentinel, not Redis Cluster "
                             "(the update state uses multi-key transactions)")
        return self
