"""The OpenAI-compatible endpoint on the edge agent, driven by the official `openai` package:
models, completions, chat completions, streaming (SSE), which side answered, and errors."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import openai
import pytest
from aiohttp import web

from cloud_router.llm_host import CausalLMHost
from edge_agent.breaker import CircuitBreaker
from edge_agent.llm_cascade import LLMCascade
from edge_agent.llm_cloud_link import LLMCloudLink
from edge_agent.llm_runtime import OnnxCausalLM
from edge_agent.openai_http import SERVED_BY_HEADER, OpenAIEndpoint
from edgecascade.processes import free_port
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.llm_policy import LLMPolicy
from shared.llm_request import GenerationRequest
from tests.helpers.llm_servicers import CloudServicer


@contextlib.asynccontextmanager
async def endpoint(edge_dir, cloud_dir=None, policy=None):
    """(an AsyncOpenAI client on the agent's endpoint, the edge model, the cloud host or None)."""
    host = cloud_server = link = None
    if cloud_dir is not None:
        host = CausalLMHost(cloud_dir, max_batch_size=2, max_delay_ms=1)
        await host.load()
        cloud_server = grpc.aio.server()
        pb_grpc.add_CloudRouterServicer_to_server(CloudServicer({host.name: host}), cloud_server)
        port = cloud_server.add_insecure_port("127.0.0.1:0")
        await cloud_server.start()
        link = LLMCloudLink(f"127.0.0.1:{port}", breaker=CircuitBreaker(3, 1.0), max_message_bytes=1 << 22)
    model = OnnxCausalLM(edge_dir)
    model.load()
    runner = web.AppRunner(OpenAIEndpoint(LLMCascade(model, policy, link), default_timeout_s=30).app())
    await runner.setup()
    http_port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", http_port)
    await site.start()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0)
    try:
        yield client, model, host
    finally:
        await client.close()
        await runner.cleanup()
        model.close()
        if link is not None:
            await link.close()
            await cloud_server.stop(0)
            await host.close()


def test_models_and_completions_from_the_edge(tiny_edge):
    async def body():
        async with endpoint(tiny_edge) as (client, model, _):
            models = await client.models.list()
            raw = await client.completions.with_raw_response.create(model=model.name, prompt="the cat sat",
                                                                      max_tokens=8, temperature=0)
            completion = raw.parse()
            stream = await client.completions.create(model=model.name, prompt="the cat sat", max_tokens=8,
                                                     temperature=0, stream=True)
            pieces = [chunk async for chunk in stream]
            alone = await model.generate(GenerationRequest(prompt="the cat sat", max_new_tokens=8), 30)
            return models, raw.headers, completion, pieces, alone, model.name

    models, headers, completion, pieces, alone, name = asyncio.run(body())
    assert [m.id for m in models.data] == [name]
    assert headers[SERVED_BY_HEADER] == "edge"
    assert completion.choices[0].text == alone.text
    assert completion.usage.completion_tokens == len(alone.token_ids)
    assert completion.model_extra["edgecascade"]["served_by"] == "edge"
    assert "".join(p.choices[0].text for p in pieces) == alone.text
    assert pieces[-1].model_extra["edgecascade"]["served_by"] == "edge"
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_completion_deferred_to_the_cloud_streams_the_clouds_answer(tiny_edge, long_cloud):
    always_defer = LLMPolicy(model_name="edge", threshold=1.0, min_tokens=1)

    async def body():
        async with endpoint(tiny_edge, long_cloud, always_defer) as (client, model, host):
            messages = [{"role": "user", "content": "what is the balance"}]
            reply = await client.chat.completions.create(model=model.name, messages=messages, max_tokens=6, temperature=0)
            stream = await client.chat.completions.create(model=model.name, messages=messages, max_tokens=6,
                                                          temperature=0, stream=True)
            pieces = [chunk async for chunk in stream]
            cloud_alone = await host.generate(
                GenerationRequest(prompt="User: what is the balance\nAssistant:", max_new_tokens=6), 30)
            return reply, pieces, cloud_alone

    reply, pieces, cloud_alone = asyncio.run(body())
    assert reply.choices[0].message.content == cloud_alone.text
    assert reply.model_extra["edgecascade"]["served_by"] == "cloud"
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == cloud_alone.text
    assert pieces[-1].model_extra["edgecascade"]["served_by"] == "cloud"


def test_bad_requests_get_openai_errors(tiny_edge):
    async def body():
        async with endpoint(tiny_edge) as (client, model, _):
            with pytest.raises(openai.BadRequestError, match="max_new_tokens"):
                await client.completions.create(model=model.name, prompt="x", max_tokens=10**6)
            with pytest.raises(openai.NotFoundError, match="unknown model"):
                await client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
            with pytest.raises(openai.BadRequestError, match="context holds 256"):
                await client.completions.create(model=model.name, prompt="the cat " * 200, max_tokens=2)
            return await client.completions.create(model=model.name, prompt="the", max_tokens=2, temperature=0)

    assert asyncio.run(body()).choices[0].text is not None
