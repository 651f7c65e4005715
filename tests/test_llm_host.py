"""The cloud causal-LM host on a tiny random-weight ERNIE-4.5: checkpoint errors name what was
expected; greedy, sampled, stop sequences, deadlines; batched greedy output equals unbatched."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from cloud_router.llm_checkpoint import inspect_checkpoint
from shared.errors import ConfigError, InvalidInputError
from shared.llm_request import FINISH_DEADLINE, FINISH_LENGTH, FINISH_STOP, GenerationRequest, GenerationResult
from tests.helpers.llm_fixtures import make_tiny_ernie, run_host

PROMPTS = ["the cat sat", "what is the balance of my account", "héllo", "edge models answer easy questions and"]


def test_checkpoint_errors_name_what_was_expected(tmp_path, tiny_ernie):
    with pytest.raises(ConfigError, match="not a directory"):
        inspect_checkpoint(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ernie, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weights; expected one of model.safetensors"):
        inspect_checkpoint(broken)
    shutil.copy(tiny_ernie / "model.safetensors", broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="no tokenizer; expected one of tokenizer.json"):
        inspect_checkpoint(broken)
    shutil.copy(tiny_ernie / "tokenizer.json", broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="expected Ernie4_5ForCausalLM or Ernie4_5_MoeForCausalLM"):
        inspect_checkpoint(broken)
    (broken / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json is missing"):
        inspect_checkpoint(broken)
    assert inspect_checkpoint(tiny_ernie).architecture == "Ernie4_5ForCausalLM"


def test_greedy_matches_transformers_generate(tiny_ernie):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = AutoModelForCausalLM.from_pretrained(tiny_ernie).eval()
    request = GenerationRequest(prompt=PROMPTS[1], max_new_tokens=12)

    async def body(host):
        return await host.generate(request, timeout_s=30)

    result = run_host(tiny_ernie, body)
    prompt_ids = torch.tensor([AutoTokenizer.from_pretrained(tiny_ernie).encode(request.prompt)])
    with torch.no_grad():
        out = reference.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=12,
                                 do_sample=False, eos_token_id=2, pad_token_id=0)
    expected = [t for t in out[0, prompt_ids.shape[1]:].tolist() if t != 2]
    assert result.token_ids == expected[: len(result.token_ids)]
    assert result.finish_reason in ("length", "eos")
    assert result.signals.tokens >= len(result.token_ids)
    assert 0 < result.signals.min_top_prob <= result.signals.quantile_top_prob <= 1


def test_batched_greedy_equals_unbatched(tiny_ernie):
    requests = [GenerationRequest(prompt=p, max_new_tokens=10 + 3 * i) for i, p in enumerate(PROMPTS)]

    async def alone(host):
        return [await host.generate(r, timeout_s=30) for r in requests]

    async def together(host):
        return await asyncio.gather(*(host.generate(r, timeout_s=30) for r in requests)), list(host.stats.batch_sizes)

    single = run_host(tiny_ernie, alone, max_batch_size=1)
    batched, sizes = run_host(tiny_ernie, together, max_batch_size=8, max_delay_ms=200)
    assert max(sizes) > 1, sizes
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert [r.text for r in batched] == [r.text for r in single]


def test_sampling_is_seeded_stop_sequences_cut_and_deadline_returns_partial(tiny_ernie):
    async def body(host):
        sampled = [await host.generate(GenerationRequest(prompt="the cat", max_new_tokens=8, temperature=1.0,
                                                         top_p=0.9, seed=s), timeout_s=30) for s in (7, 7, 8)]
        free = await host.generate(GenerationRequest(prompt="the cat", max_new_tokens=16), timeout_s=30)
        stop = free.text[3:5] if len(free.text) >= 5 else free.text[-1:]
        stopped = await host.generate(GenerationRequest(prompt="the cat", max_new_tokens=16, stop=(stop,)),
                                      timeout_s=30)
        tokens = []
        async for event in host.stream(GenerationRequest(prompt="the cat", max_new_tokens=4000), timeout_s=0.3):
            tokens.append(event)
        return sampled, free, stop, stopped, tokens

    sampled, free, stop, stopped, events = run_host(tiny_ernie, body)
    assert sampled[0].token_ids == sampled[1].token_ids
    assert free.finish_reason == FINISH_LENGTH
    assert stopped.finish_reason == FINISH_STOP and stop not in stopped.text
    assert free.text.startswith(stopped.text) and free.text[len(stopped.text):].startswith(stop)
    final = events[-1]
    assert isinstance(final, GenerationResult) and final.finish_reason in (FINISH_DEADLINE, FINISH_LENGTH)
    assert "".join(e.text for e in events[:-1]) == final.text


def test_bad_requests_are_invalid_input(tiny_ernie):
    async def body(host):
        errors = []
        for request in (GenerationRequest(prompt="x", max_new_tokens=0),
                        GenerationRequest(prompt="x", max_new_tokens=10**6),
                        GenerationRequest(prompt="the cat " * 200, max_new_tokens=4),
                        GenerationRequest(prompt="", max_new_tokens=4)):
            with pytest.raises(InvalidInputError) as info:
                await host.generate(request, timeout_s=5)
            errors.append(str(info.value))
        ok = await host.generate(GenerationRequest(prompt="the", max_new_tokens=2), timeout_s=5)
        return errors, ok

    errors, ok = run_host(tiny_ernie, body)
    assert "max_new_tokens" in errors[0] and "max_new_tokens" in errors[1]
    assert "context holds 256" in errors[2]
    assert len(ok.token_ids) <= 2


def test_moe_checkpoint_loads_and_generates(tmp_path):
    model_dir = make_tiny_ernie(tmp_path / "moe", moe=True)

    async def body(host):
        return await host.generate(GenerationRequest(prompt="the cat", max_new_tokens=5), timeout_s=30)

    assert inspect_checkpoint(model_dir).architecture == "Ernie4_5_MoeForCausalLM"
    assert run_host(model_dir, body).finish_reason in ("length", "eos")
