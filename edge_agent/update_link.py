"""The agent's update calls to the cloud router: poll for a notice, fetch patch chunks, report.

A channel of its own to the router, so chunk downloads never queue behind (or in front of)
deferred inference calls. Transient trouble (router down, slow, busy, or the update gone)
is `UnavailableError`: the updater keeps what it has and tries again at the next poll. A
router that has no chunk the manifest says exists is a truncated patch.
"""

from __future__ import annotations

import logging
import grpc

from edge_agent.cloud_link import channel_options
from protos import edgecascade_pb2 as pb
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import TruncatedPatchError, UnavailableError

log = logging.getLogger(__name__)

#: Answers to a chunk request that mean "this chunk does not exist" rather than "try later".
MISSING_CHUNK_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}


class UpdateLink:
    def __init__(self, target: str, *, agent_id: str, max_message_bytes: int, timeout_s: float = 10.0) -> None:
        self.target = target
        self.agent_id = agent_id
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(target, options=channel_options(max_message_bytes))
        self._stub = pb_grpc.CloudRouterStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def notice(self, model_name: str, model_version: int) -> pb.UpdateNotice:
        request = pb.UpdateNoticeRequest(agent_id=self.agent_id, model_name=model_name, model_version=model_version)
        try:
            return await self._stub.GetUpdateNotice(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(f"update poll to {self.target} failed: {exc.code().name} {exc.details()}") from None

    async def fetch_chunk(self, update_id: str, index: int) -> bytes:
        try:
            chunk = await self._stub.FetchPatchChunk(pb.PatchChunkRequest(update_id=update_id, index=index),
                                                     timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in MISSING_CHUNK_CODES:
                raise TruncatedPatchError(f"router has no chunk {index} of update {update_id}: {exc.details()}") from None
            raise UnavailableError(f"fetching chunk {index} of update {update_id} failed: "
                                   f"{exc.code().name} {exc.details()}") from None
        return chunk.data

    async def report(self, *, model_name: str, update_id: str, version: int, state: str, reason: str = "",
                     message: str = "", active_version: int = 0) -> bool:
        """Tell the router about one step; False (logged) when the router did not take it."""
        request = pb.UpdateStateReport(agent_id=self.agent_id, model_name=model_name, update_id=update_id, version=version,
                                       state=state, reason=reason, message=message[:500], active_version=active_version)
        try:
            await self._stub.ReportUpdateState(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.warning("could not report update state %s to %s: %s %s", state, self.target, exc.code().name, exc.details())
            return False
        return True

