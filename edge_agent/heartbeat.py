"""The agent's heartbeat: every `heartbeat_interval_s`, report status to the router (which keeps
the fleet registry) and take back the cloud's pressure for the model this agent defers to.

No answer for `pressure_stale_s` (router down, Redis down) resets the pressure to 0: the
breaker, not a stale reading, protects the agent from a dead cloud.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

import grpc

from edge_agent.cascade import Cascade
from edge_agent.cloud_reachability import HeartbeatLog
from protos import edgecascade_pb2 as pb

log = logging.getLogger(__name__)


def agent_status(cascade: Cascade, agent_id: str) -> pb.AgentStatus:
    """What the agent reports in GetStatus and in each heartbeat."""
    active = cascade.active
    model, spec = active.model, active.policy.spec
    cloud = cascade.cloud
    status = pb.AgentStatus(
        agent_id=agent_id,
        model_name=model.name,
        model_version=str(model.version),
        breaker_state=cloud.breaker.state if cloud else "none",
        route_counts=dict(cascade.route_counts),
        threshold=cascade.current_threshold(),
        cloud_pressure=cascade.pressure,
        policy_signal=spec.signal,
        base_threshold=spec.threshold,
        fallback_counts=dict(cascade.fallback_counts),
        cloud_model=cloud.model if cloud else "",
        out_of_scope_label=model.card.out_of_scope_label or "",
    )
    if spec.min_threshold is not None:
        status.min_threshold = spec.min_threshold
    if spec.abstain_threshold is not None:
        status.abstain_threshold = spec.abstain_threshold
    if spec.cloud_abstain_threshold is not None:
        status.cloud_abstain_threshold = spec.cloud_abstain_threshold
    return status


def lm_only_status(agent_id: str, llm) -> pb.AgentStatus:
    """GetStatus of an agent without a classifier bundle: the classifier's fields stay empty;
    `breaker_state` is that of the language model's cloud link ("none" without a cloud)."""
    cloud = llm.cloud if llm is not None else None
    return pb.AgentStatus(agent_id=agent_id, breaker_state=cloud.breaker.state if cloud else "none")


class Heartbeat:
    def __init__(self, cascade: Cascade, agent_id: str, *, interval_s: float, pressure_stale_s: float) -> None:
        if cascade.cloud is None:
            raise ValueError("a heartbeat needs a cloud link")
        self.cascade = cascade
        self.agent_id = agent_id
        self.interval_s = interval_s
        self.pressure_stale_s = pressure_stale_s
        self.last_answer_s: Optional[float] = None
        self.last_response: Optional[pb.HeartbeatResponse] = None
        self.sent = 0
        self.failed = 0
        self.health_log = HeartbeatLog(cascade.cloud.target)
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def beat_once(self) -> Optional[pb.HeartbeatResponse]:
        request = pb.HeartbeatRequest(status=agent_status(self.cascade, self.agent_id), interval_s=self.interval_s)
        self.sent += 1
        try:
            response = await self.cascade.cloud.heartbeat(request, timeout_s=max(0.2, min(2.0, self.interval_s)))
        except grpc.aio.AioRpcError as exc:
            self.failed += 1
            log.debug("heartbeat failed: %s %s", exc.code().name, exc.details())
            self.health_log.failed(f"{exc.code().name} {exc.details() or ''}".strip())
            if self.last_answer_s is None or time.monotonic() - self.last_answer_s > self.pressure_stale_s:
                self.cascade.pressure = 0.0
            return None
        self.last_answer_s = time.monotonic()
        self.last_response = response
        self.health_log.answered()
        self.cascade.pressure = response.pressure
        return response

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.beat_once()
            except Exception:
                log.exception("heartbeat failed unexpectedly")
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
