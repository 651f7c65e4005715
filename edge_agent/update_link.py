"""The agent's update calls to the cloud router: poll for a notice, fetch patch chunks, report.

A channel of its own to the router, so chunk downloads never queue behind (or in front of)
deferred inference calls; it follows its TLS and token files like theirs
(shared/rotating_channel.py). Transient trouble (router down, slow, busy, or the update gone)
is `UnavailableError`: the updater keeps what it has and tries again at the next poll. A
router that has no chunk the manifest says exists is a truncated patch. A state report the
router does not take is kept (the newest one only) and sent again before each poll, until the
router takes it (docs/model_updates.md, "State reports").
"""

from __future__ import annotations

import logging
from typing import Optional

import grpc

from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import TruncatedPatchError, UnavailableError
from shared.grpc_options import channel_options
from shared.rotating_channel import RotatingChannel
from shared.tls import ClientSecurity
from shared.update_states import supersedes

log = logging.getLogger(__name__)

#: Answers to a chunk request that mean "this chunk does not exist" rather than "try later".
MISSING_CHUNK_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}
#: Answers to a state report that mean the router will never take it: it is dropped, not sent again.
REFUSED_REPORT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}


class UpdateLink:
    def __init__(self, target: str, *, agent_id: str, max_message_bytes: int, timeout_s: float = 10.0,
                 security: Optional[ClientSecurity] = None) -> None:
        self.target = target
        self.agent_id = agent_id
        self.timeout_s = timeout_s
        self._channel = RotatingChannel(target, security, stub_of=pb_grpc.CloudRouterStub, what="update link",
                                        options=channel_options(max_message_bytes, fail_fast=True))
        self.pending_report: Optional[pb.UpdateStateReport] = None
        """The newest state report the router has not taken yet (`resend_report` tries again)."""

    async def close(self) -> None:
        await self._channel.close()

    async def notice(self, model_name: str, model_version: int) -> pb.UpdateNotice:
        request = pb.UpdateNoticeRequest(agent_id=self.agent_id, model_name=model_name, model_version=model_version)
        try:
            return await self._channel.stub().GetUpdateNotice(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(f"update poll to {self.target} failed: {exc.code().name} {exc.details()}") from None

    async def fetch_chunk(self, update_id: str, index: int) -> bytes:
        try:
            chunk = await self._channel.stub().FetchPatchChunk(pb.PatchChunkRequest(update_id=update_id, index=index),
                                                     timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in MISSING_CHUNK_CODES:
                raise TruncatedPatchError(f"router has no chunk {index} of update {update_id}: {exc.details()}") from None
            raise UnavailableError(f"fetching chunk {index} of update {update_id} failed: "
                                   f"{exc.code().name} {exc.details()}") from None
        return chunk.data

    async def report(self, *, model_name: str, update_id: str, version: int, state: str, reason: str = "",
                     message: str = "", active_version: int = 0) -> bool:
        """Tell the router about one step; False (logged) when the router did not take it. Then
        the report is kept for `resend_report`, unless a later state of the same update is kept
        already (that one is sent instead); a report of another update replaces it."""
        request = pb.UpdateStateReport(agent_id=self.agent_id, model_name=model_name, update_id=update_id, version=version,
                                       state=state, reason=reason, message=message[:500], active_version=active_version)
        kept = self.pending_report
        if kept is None or kept.update_id != update_id or supersedes(state, kept.state):
            self.pending_report = request
        return await self._send_pending(again=False)

    async def resend_report(self) -> bool:
        """Send the kept report again, if there is one; True when none is left."""
        if self.pending_report is None:
            return True
        return await self._send_pending(again=True)

    async def _send_pending(self, *, again: bool) -> bool:
        request = self.pending_report
        assert request is not None
        try:
            await self._channel.stub().ReportUpdateState(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in REFUSED_REPORT_CODES:
                log.warning("router %s refused update state %s of update %s, not sent again: %s %s", self.target,
                            request.state, request.update_id, exc.code().name, exc.details())
                self._taken(request)
            else:  # at each poll of a long outage only at debug level
                (log.debug if again else log.warning)(
                    "could not report update state %s of update %s to %s (kept, sent again before each poll): %s %s",
                    request.state, request.update_id, self.target, exc.code().name, exc.details())
            return False
        self._taken(request)
        if again:
            log.info("update %s: state %s reported to %s after all", request.update_id, request.state, self.target)
        return True

    def _taken(self, request: pb.UpdateStateReport) -> None:
        if self.pending_report is request:
            self.pending_report = None
