"""Talk to a cloud router about model updates: publish a package, read rollout status."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Optional

import grpc

from edgecascade.router_address import router_call_error
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.delta.package import DeltaPackage
from shared.errors import EdgecascadeError
from shared.grpc_options import message_limits
from shared.tls import ClientSecurity, open_channel
from shared.update_states import FAILED_STATES, HEALTHY

UPLOAD_MESSAGE_BYTES = 1 << 20
Progress = Callable[[int, int], None]


def router_channel(target: str, security: Optional[ClientSecurity] = None) -> grpc.Channel:
    """A channel to a router with message limits fit for uploads (TLS and token per `security`);
    pass it as `channel=` to reuse one connection for many calls."""
    limit = 2 * UPLOAD_MESSAGE_BYTES + (1 << 20)
    return open_channel(target, security, options=message_limits(64 << 20, max_send_bytes=limit))


def _channel(target: str, channel: Optional[grpc.Channel], security: Optional[ClientSecurity] = None):
    """`channel` itself (left open), or a new one closed after the call."""
    return contextlib.nullcontext(channel) if channel is not None else router_channel(target, security)


def _typed(exc: grpc.RpcError, target: str, security: Optional[ClientSecurity] = None) -> EdgecascadeError:
    return router_call_error(exc.code(), exc.details(), target, security)


def _upload(package: DeltaPackage, canary_percent: float, progress: Optional[Progress]) -> Iterator[pb.PublishUpdateRequest]:
    payload = package.payload
    yield pb.PublishUpdateRequest(signed_manifest=package.signed_manifest, canary_percent=canary_percent)
    for start in range(0, len(payload), UPLOAD_MESSAGE_BYTES):
        end = min(start + UPLOAD_MESSAGE_BYTES, len(payload))
        yield pb.PublishUpdateRequest(payload_chunk=payload[start:end])
        if progress:
            progress(end, len(payload))


def publish(target: str, package: DeltaPackage, *, canary_percent: float = 0.0, progress: Optional[Progress] = None,
            timeout_s: float = 600.0, channel: Optional[grpc.Channel] = None,
            security: Optional[ClientSecurity] = None) -> pb.PublishUpdateResponse:
    """Upload `package` to the router at `target`; `progress(sent, total)` after each message."""
    with _channel(target, channel, security) as channel:
        try:
            return pb_grpc.CloudRouterStub(channel).PublishUpdate(_upload(package, canary_percent, progress), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise _typed(exc, target, security) from None


def rollout_status(target: str, model_name: str = "", timeout_s: float = 10.0,
                   channel: Optional[grpc.Channel] = None, security: Optional[ClientSecurity] = None) -> pb.RolloutStatus:
    with _channel(target, channel, security) as channel:
        try:
            return pb_grpc.CloudRouterStub(channel).GetRolloutStatus(pb.RolloutStatusRequest(model_name=model_name),
                                                                     timeout=timeout_s)
        except grpc.RpcError as exc:
            raise _typed(exc, target, security) from None


def rollout_settled(status: pb.RolloutStatus, update_id: str) -> Optional[str]:
    """Where the rollout of `update_id` stands, once it is over: `done` when every agent the
    router knows for the update's model reports it healthy (or already served its version),
    `failed` when it reached every agent but some refused it or rolled it back, `halted` or
    `replaced` when it stopped; None while it is still going."""
    rollout = next((r for r in status.rollouts if r.update_id == update_id), None)
    if rollout is None:
        return "replaced"
    if rollout.phase == "halted":
        return "halted"
    agents = [a for a in status.agents if a.model_name == rollout.model_name]
    if rollout.phase != "full" or not agents:
        return None
    ours = [a for a in agents if a.update_id == update_id]
    there_already = [a for a in agents if a.update_id != update_id and a.active_version == rollout.version]
    if len(ours) + len(there_already) < len(agents) or any(a.state not in FAILED_STATES | {HEALTHY} for a in ours):
        return None
    return "failed" if any(a.state != HEALTHY for a in ours) else "done"


def follow_rollout(target: str, update_id: str, model_name: str, *, timeout_s: float, poll_s: float = 1.0,
                   on_status: Optional[Callable[[pb.RolloutStatus], None]] = None,
                   security: Optional[ClientSecurity] = None) -> str:
    """Poll the rollout until it settles (`done`, `failed`, `halted`, `replaced`) or `timeout` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = rollout_status(target, model_name, security=security)
        if on_status:
            on_status(status)
        settled = rollout_settled(status, update_id)
        if settled:
            return settled
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(poll_s)
