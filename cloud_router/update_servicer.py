"""The CloudRouter's update RPCs over gRPC: proto <-> `UpdateService`, nothing else."""

from __future__ import annotations

from typing import AsyncIterator

import grpc

from cloud_router.rollout import Rollout
from cloud_router.updates import UpdateBackend
from protos import edgecascade_pb2 as pb
from shared.errors import InvalidInputError
from shared.grpc_errors import grpc_errors


class UpdateRpcs:
    """Mixed into `CloudRouterServicer`; needs `self.updates`."""

    updates: UpdateBackend

    @grpc_errors
    async def PublishUpdate(self, request_iterator: AsyncIterator[pb.PublishUpdateRequest],
                            context: grpc.aio.ServicerContext) -> pb.PublishUpdateResponse:
        signed_manifest, canary_percent, manifest = b"", 0.0, None
        payload = bytearray()
        async for part in request_iterator:
            if manifest is None:
                if not part.signed_manifest:
                    raise InvalidInputError("the first PublishUpdate message must carry signed_manifest")
                signed_manifest, canary_percent = part.signed_manifest, part.canary_percent
                manifest = self.updates.read_manifest(signed_manifest)
            payload += part.payload_chunk
            if len(payload) > manifest.payload_size + manifest.chunk_size:
                raise InvalidInputError(f"upload is longer than the manifest's {manifest.payload_size} payload bytes")
        if manifest is None:
            raise InvalidInputError("PublishUpdate received no messages")
        update = await self.updates.publish_off_loop(signed_manifest, bytes(payload), canary_percent)
        m = update.manifest
        return pb.PublishUpdateResponse(
            update_id=update.update_id, model_name=m.model_name, version=m.version, rollback=m.rollback,
            payload_bytes=update.payload_bytes, target_bytes=m.target_size, patch_format=m.patch_format,
        )

    @grpc_errors
    async def GetUpdateNotice(self, request: pb.UpdateNoticeRequest, context: grpc.aio.ServicerContext) -> pb.UpdateNotice:
        update = await self.updates.poll(request.agent_id, request.model_name, request.model_version)
        if update is None:
            return pb.UpdateNotice(available=False)
        return pb.UpdateNotice(available=True, update_id=update.update_id, signed_manifest=update.signed_manifest)

    @grpc_errors
    async def FetchPatchChunk(self, request: pb.PatchChunkRequest, context: grpc.aio.ServicerContext) -> pb.PatchChunk:
        data = await self.updates.fetch_chunk(request.update_id, request.index)
        return pb.PatchChunk(update_id=request.update_id, index=request.index, data=data)

    @grpc_errors
    async def ReportUpdateState(self, request: pb.UpdateStateReport, context: grpc.aio.ServicerContext) -> pb.UpdateStateAck:
        await self.updates.take_report(
            request.agent_id, model_name=request.model_name, update_id=request.update_id, version=request.version,
            state=request.state, reason=request.reason, message=request.message, active_version=request.active_version,
        )
        return pb.UpdateStateAck()

    @grpc_errors
    async def GetRolloutStatus(self, request: pb.RolloutStatusRequest, context: grpc.aio.ServicerContext) -> pb.RolloutStatus:
        rollouts, agents = await self.updates.rollout_status(request.model_name)
        return pb.RolloutStatus(
            rollouts=[_rollout_info(r) for r in rollouts],
            agents=[
                pb.AgentUpdateState(
                    agent_id=a.agent_id, model_name=a.model_name, active_version=a.active_version, update_id=a.update_id,
                    version=a.version, state=a.state, reason=a.reason, message=a.message, canary=a.canary,
                    last_seen_unix_s=a.last_seen_unix_s,
                )
                for a in agents
            ],
        )


def _rollout_info(rollout: Rollout) -> pb.RolloutInfo:
    update, m = rollout.update, rollout.update.manifest
    return pb.RolloutInfo(
        update_id=update.update_id, model_name=m.model_name, version=m.version, rollback=m.rollback, phase=rollout.phase,
        canary_percent=rollout.canary_percent, payload_bytes=update.payload_bytes, target_bytes=m.target_size,
        patch_format=m.patch_format, published_unix_s=update.published_unix_s,
    )
