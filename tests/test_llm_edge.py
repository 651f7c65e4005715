"""export-llm and the edge runtime: ONNX greedy tokens equal transformers' on the same
checkpoint; INT8 gets a measured agreement; the edge generates without torch; bad directories
and unsupported architectures are named."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from edge_agent.llm_runtime import OnnxCausalLM
from edgecascade.cli import main as cli_main
from edgecascade.offline.llm_agreement import greedy_agreement
from edgecascade.offline.llm_export import export_llm
from shared.errors import ConfigError, InvalidInputError
from shared.llm_request import FINISH_DEFERRED, FINISH_STOP, GenerationRequest, GenerationResult
from tests.helpers.llm_fixtures import make_tiny_ernie

PROMPTS = ["the cat sat", "what is the balance of my account", "héllo wörld", "how do I reset", "1 2 3"]


def test_onnx_greedy_tokens_equal_transformers(tiny_ernie, tiny_edge):
    agreement = greedy_agreement(tiny_ernie, tiny_edge, PROMPTS, max_new_tokens=24)
    assert agreement.exact_sequences == len(PROMPTS), agreement
    card = json.loads((tiny_edge / "edge_llm.json").read_text())
    assert card["architecture"] == "Ernie4_5ForCausalLM" and card["context_tokens"] == 256


def test_int8_export_reports_a_measured_agreement(tiny_ernie, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "int8"
    assert cli_main(["export-llm", str(tiny_ernie), str(out), "--precision", "int8",
                     "--agreement-prompts", str(prompts), "--agreement-tokens", "12"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["card"]["precision"] == "int8"
    agreement = report["agreement"]
    assert agreement["prompts"] == len(PROMPTS) and 0.0 <= agreement["prefix_agreement"] <= 1.0
    assert "greedy agreement with transformers on 5 prompts" in capsys.readouterr().out
    assert (out / "model.onnx").stat().st_size > 0


def test_edge_streams_stops_and_defers_early(tiny_edge):
    async def body():
        model = OnnxCausalLM(tiny_edge)
        model.load()
        try:
            events = [e async for e in model.stream(GenerationRequest(prompt="the cat", max_new_tokens=12), 30)]
            full = events[-1]
            stop = full.text[2:4]
            stopped = await model.generate(GenerationRequest(prompt="the cat", max_new_tokens=12, stop=(stop,)), 30)
            deferred = await model.generate(GenerationRequest(prompt="the cat", max_new_tokens=12), 30,
                                            should_defer=lambda signals: signals.tokens >= 3)
            with pytest.raises(InvalidInputError, match="context holds 256"):
                await model.generate(GenerationRequest(prompt="the cat " * 200, max_new_tokens=4), 30)
            return events, stopped, stop, deferred
        finally:
            model.close()

    events, stopped, stop, deferred = asyncio.run(body())
    final = events[-1]
    assert isinstance(final, GenerationResult)
    assert "".join(e.text for e in events[:-1]) == final.text
    assert [e.token_id for e in events[:-1] if e.token_id is not None] == final.token_ids
    assert stopped.finish_reason == FINISH_STOP and final.text.startswith(stopped.text + stop)
    assert deferred.finish_reason == FINISH_DEFERRED and len(deferred.token_ids) == 2
    assert deferred.token_ids == final.token_ids[:2]


def test_edge_generation_imports_no_torch(tiny_edge):
    script = f"""
import asyncio, sys
from edge_agent.llm_runtime import OnnxCausalLM
from shared.llm_request import GenerationRequest
model = OnnxCausalLM({str(tiny_edge)!r}); model.load()
result = asyncio.run(model.generate(GenerationRequest(prompt="the cat", max_new_tokens=4), 30))
assert result.token_ids, result
assert not [m for m in ("torch", "transformers") if m in sys.modules], sorted(sys.modules)
model.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_bad_directories_are_named(tmp_path, tiny_edge):
    with pytest.raises(ConfigError, match="edge_llm.json is missing"):
        OnnxCausalLM(tmp_path).load()
    with pytest.raises(ConfigError, match="not a directory"):
        export_llm(tmp_path / "nope", tmp_path / "out")
    moe = make_tiny_ernie(tmp_path / "moe", moe=True)
    with pytest.raises(ConfigError, match="Ernie4_5_MoeForCausalLM is not supported by the onnxruntime-genai"):
        export_llm(moe, tmp_path / "moe-out")
    with pytest.raises(ConfigError, match="not empty"):
        export_llm(moe, tiny_edge)
