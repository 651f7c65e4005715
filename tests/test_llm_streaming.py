"""Generate over gRPC on loopback: SDK -> edge agent -> cloud router, with the real servicers,
the tiny ERNIE-4.5 checkpoints, and real gRPC servers. Streaming order, deferral with restart,
cancellation reaching the cloud, a deadline mid-stream, fallback when the cloud is down, and
bad input answered with INVALID_ARGUMENT while the agent keeps serving."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from cloud_router.llm_host import CausalLMHost
from edge_agent.breaker import CircuitBreaker
from edge_agent.llm_cascade import LLMCascade
from edge_agent.llm_cloud_link import LLMCloudLink
from edge_agent.llm_runtime import OnnxCausalLM
from edgecascade.processes import free_port
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.errors import InvalidInputError
from shared.llm_policy import LLMPolicy
from shared.llm_request import GenerationRequest
from shared.sdk import AsyncClient
from tests.helpers.llm_servicers import CloudServicer, EdgeServicer

ALWAYS_DEFER = LLMPolicy(model_name="tiny", threshold=1.0, min_tokens=2)


@contextlib.asynccontextmanager
async def cascade(edge_dir, cloud_dir, policy, *, cloud_up=True):
    """(edge target, cloud host, edge model) with both servers running on loopback."""
    host = CausalLMHost(cloud_dir, max_batch_size=4, max_delay_ms=2)
    await host.load()
    cloud_server = grpc.aio.server()
    pb_grpc.add_CloudRouterServicer_to_server(CloudServicer({host.name: host}), cloud_server)
    cloud_port = free_port()
    if cloud_up:
        cloud_server.add_insecure_port(f"127.0.0.1:{cloud_port}")
        await cloud_server.start()
    model = OnnxCausalLM(edge_dir)
    model.load()
    link = LLMCloudLink(f"127.0.0.1:{cloud_port}", breaker=CircuitBreaker(3, 1.0), max_message_bytes=1 << 22)
    llm = LLMCascade(model, policy, link)
    edge_server = grpc.aio.server()
    pb_grpc.add_EdgeAgentServicer_to_server(EdgeServicer(llm), edge_server)
    edge_port = edge_server.add_insecure_port("127.0.0.1:0")
    await edge_server.start()
    try:
        yield f"127.0.0.1:{edge_port}", host, model
    finally:
        await edge_server.stop(0)
        await link.close()
        model.close()
        if cloud_up:
            await cloud_server.stop(0)
        await host.close()


async def finished_stats(host) -> dict:
    """The cloud host's finish counts, once its model thread has booked the last batch."""
    for _ in range(500):
        if host.stats.finished:
            break
        await asyncio.sleep(0.01)
    return dict(host.stats.finished)


async def collect(target, prompt, **kwargs):
    async with AsyncClient(target, timeout_s=30) as client:
        stream = client.generate(prompt, **kwargs)
        chunks = [chunk async for chunk in stream]
        return chunks, stream


def test_edge_answer_streams_in_order(tiny_edge, long_cloud):
    async def body():
        async with cascade(tiny_edge, long_cloud, policy=None) as (target, host, model):
            chunks, stream = await collect(target, "the cat sat", max_new_tokens=12)
            alone = await model.generate(GenerationRequest(prompt="the cat sat", max_new_tokens=12), 30)
            return chunks, stream, alone, dict(host.stats.finished)

    chunks, stream, alone, cloud_finished = asyncio.run(body())
    assert [t for c in chunks for t in c.token_ids] == alone.token_ids
    assert "".join(c.text for c in chunks) == stream.text == alone.text
    assert {c.source for c in chunks} == {"edge"} and not any(c.restart for c in chunks)
    summary = stream.summary
    assert summary.served_by == "edge" and summary.finish_reason == alone.finish_reason and summary.status == "ok"
    assert summary.edge_tokens == len(alone.token_ids) and summary.cloud_tokens == 0
    assert summary.prompt_tokens == alone.prompt_tokens and 0 < summary.min_top_prob <= summary.quantile_top_prob
    assert cloud_finished == {}


def test_early_deferral_restarts_with_the_clouds_tokens(tiny_edge, long_cloud):
    request = GenerationRequest(prompt="what is the balance", max_new_tokens=10)

    async def body():
        async with cascade(tiny_edge, long_cloud, ALWAYS_DEFER) as (target, host, _):
            chunks, stream = await collect(target, request.prompt, max_new_tokens=10)
            cloud_alone = await host.generate(request, 30)
            return chunks, stream, cloud_alone

    chunks, stream, cloud_alone = asyncio.run(body())
    restart = next(i for i, c in enumerate(chunks) if c.restart)
    assert all(c.source == "edge" for c in chunks[:restart]) and all(c.source == "cloud" for c in chunks[restart:])
    assert len([t for c in chunks[:restart] for t in c.token_ids]) == 1   # the second token was never used
    assert [t for c in chunks[restart:] for t in c.token_ids] == cloud_alone.token_ids
    assert stream.text == cloud_alone.text
    summary = stream.summary
    assert summary.served_by == "cloud" and summary.defer_reason == "low_confidence"
    assert summary.edge_tokens == 1 and summary.cloud_tokens == len(cloud_alone.token_ids)
    assert summary.min_top_prob < 1.0


def test_client_cancel_stops_the_cloud(tiny_edge, long_cloud):
    async def body():
        async with cascade(tiny_edge, long_cloud, ALWAYS_DEFER) as (target, host, _):
            async with AsyncClient(target, timeout_s=60) as client:
                stream = client.generate("the cat sat on the mat", max_new_tokens=4000)
                async for chunk in stream:
                    if chunk.source == "cloud" and chunk.token_ids:
                        stream.cancel()
                        break
            return await finished_stats(host), host.stats.generated_tokens

    finished, tokens = asyncio.run(body())
    assert finished == {"cancelled": 1}
    assert tokens < 4000


def test_deadline_mid_stream_returns_what_was_produced(tiny_edge, long_cloud):
    async def body():
        async with cascade(tiny_edge, long_cloud, ALWAYS_DEFER) as (target, host, _):
            chunks, stream = await collect(target, "the cat sat", max_new_tokens=4000, timeout_s=1.5)
            return chunks, stream, await finished_stats(host)

    chunks, stream, cloud_finished = asyncio.run(body())
    summary = stream.summary
    assert summary is not None and summary.finish_reason == "deadline"
    assert "deadline passed after" in summary.status
    assert summary.cloud_tokens > 0 and stream.text
    assert cloud_finished == {"deadline": 1}


def test_cloud_down_falls_back_to_the_edge_answer(tiny_edge, long_cloud):
    request = GenerationRequest(prompt="how do I reset", max_new_tokens=10)

    async def body():
        async with cascade(tiny_edge, long_cloud, ALWAYS_DEFER, cloud_up=False) as (target, _, model):
            chunks, stream = await collect(target, request.prompt, max_new_tokens=10)
            return chunks, stream, await model.generate(request, 30)

    chunks, stream, alone = asyncio.run(body())
    assert not any(c.restart for c in chunks) and {c.source for c in chunks} == {"edge"}
    assert stream.text == alone.text
    assert stream.summary.served_by == "edge_fallback" and stream.summary.fallback_reason


def test_bad_input_is_invalid_argument_and_the_agent_keeps_serving(tiny_edge, long_cloud):
    async def body():
        async with cascade(tiny_edge, long_cloud, policy=None) as (target, _, _):
            errors = []
            for prompt, kwargs in ((b"caf\xc3(", {}), ("x", {"max_new_tokens": 100_000}),
                                   ("x", {"max_new_tokens": -1}), ("the cat " * 200, {}), ("x", {"top_p": 2.0})):
                with pytest.raises(InvalidInputError) as info:
                    await collect(target, prompt, **kwargs)
                errors.append(str(info.value))
            chunks, stream = await collect(target, "the cat", max_new_tokens=3)
            return errors, stream

    errors, stream = asyncio.run(body())
    assert "not valid UTF-8: byte 3" in errors[0]
    assert "max_new_tokens must be between 1 and" in errors[1] and "max_new_tokens" in errors[2]
    assert "context holds 256" in errors[3] and "top_p" in errors[4]
    assert stream.summary.served_by == "edge" and stream.summary.status == "ok"
