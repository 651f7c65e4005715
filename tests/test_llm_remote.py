"""The remote cloud backend against a real OpenAI-compatible server on loopback:
`transformers serve` hosting the tiny ERNIE-4.5 checkpoint. Skipped where the serving extra
(fastapi, uvicorn, accelerate) is not installed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest

from cloud_router.openai_backend import RemoteCausalLM
from edge_agent.breaker import CircuitBreaker
from edge_agent.llm_cascade import LLMCascade
from edge_agent.llm_cloud_link import LLMCloudLink
from edge_agent.llm_runtime import OnnxCausalLM
from edgecascade.processes import free_port
from protos import edgecascade_pb2_grpc as pb_grpc
from shared.llm_policy import LLMPolicy
from shared.llm_request import GenerationRequest, GenerationResult
from shared.sdk import AsyncClient
from tests.helpers.llm_servicers import CloudServicer, EdgeServicer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def served(tiny_ernie, tmp_path_factory):
    """(base URL, model id) of `transformers serve` running the tiny checkpoint."""
    port = free_port()
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(tiny_ernie),
                                "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "warning"],
                               stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"{base}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("transformers serve did not start within 240 s")
                time.sleep(0.5)
        yield base, str(tiny_ernie)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_remote_backend_streams_from_a_real_server(served):
    base, model_id = served

    async def body():
        remote = RemoteCausalLM(base, model_id, name="big")
        await remote.load()
        try:
            events = [e async for e in remote.stream(GenerationRequest(prompt="the cat sat", max_new_tokens=8), 60)]
            down = RemoteCausalLM("http://127.0.0.1:9/v1", model_id)
            await down.load()
            with pytest.raises(Exception) as info:
                await down.generate(GenerationRequest(prompt="x", max_new_tokens=2), 5)
            await down.close()
            return events, info.value
        finally:
            await remote.close()

    events, error = asyncio.run(body())
    final = events[-1]
    assert isinstance(final, GenerationResult) and final.finish_reason in ("length", "eos")
    assert "".join(e.text for e in events[:-1]) == final.text and final.signals.tokens >= 1
    assert type(error).__name__ == "UnavailableError"


def test_edge_defers_to_the_remote_engine(served, tiny_edge):
    base, model_id = served

    async def body():
        remote = RemoteCausalLM(base, model_id, name="big")
        await remote.load()
        cloud_server = grpc.aio.server()
        pb_grpc.add_CloudRouterServicer_to_server(CloudServicer({"big": remote}), cloud_server)
        cloud_port = cloud_server.add_insecure_port("127.0.0.1:0")
        await cloud_server.start()
        model = OnnxCausalLM(tiny_edge)
        model.load()
        link = LLMCloudLink(f"127.0.0.1:{cloud_port}", breaker=CircuitBreaker(3, 1.0), max_message_bytes=1 << 22)
        edge_server = grpc.aio.server()
        pb_grpc.add_EdgeAgentServicer_to_server(
            EdgeServicer(LLMCascade(model, LLMPolicy(model_name="e", threshold=1.0, min_tokens=1), link)), edge_server)
        edge_port = edge_server.add_insecure_port("127.0.0.1:0")
        await edge_server.start()
        try:
            async with AsyncClient(f"127.0.0.1:{edge_port}", timeout_s=60) as client:
                stream = client.generate("the cat sat", max_new_tokens=6)
                chunks = [c async for c in stream]
            direct = await remote.generate(GenerationRequest(prompt="the cat sat", max_new_tokens=6), 60)
            return chunks, stream, direct
        finally:
            await edge_server.stop(0)
            await link.close()
            model.close()
            await cloud_server.stop(0)
            await remote.close()

    chunks, stream, direct = asyncio.run(body())
    assert any(c.restart for c in chunks)
    assert stream.summary.served_by == "cloud" and stream.summary.cloud_tokens > 0
    assert stream.text == direct.text
