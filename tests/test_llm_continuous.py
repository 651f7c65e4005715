"""Continuous batching on the cloud host (tiny random-weight ERNIE-4.5, dense and MoE): a
sequence that joins a running batch mid-way gives the same greedy tokens as alone or in a static
batch (which proves the cache, mask and position surgery); a cancelled or expired row in a joined
batch frees its place and leaves the other rows as they were; a model whose cache cannot be
joined falls back to static batching; the router setting turns it off."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from cloud_router.llm_batch import RunningBatch, is_joinable, supports_joining
from cloud_router.llm_host import eos_token_ids
from shared.llm_request import FINISH_CANCELLED, FINISH_DEADLINE, GenerationRequest, GenerationResult
from shared.llm_sequence import LiveSequence
from tests.helpers.llm_fixtures import make_tiny_ernie, run_host

PROMPTS = ["héllo", "edge models answer easy questions and", "the cat sat", "what is the balance of my account"]
#: On `long_cloud` this prompt runs greedily to 4,000 tokens without an end token: a batch that
#: stays busy until the test cancels it.
LONG_RUNNER = "edge models answer easy questions and"


def _load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def _sequence(model, tokenizer, prompt: str, max_new_tokens: int) -> LiveSequence:
    return LiveSequence(GenerationRequest(prompt=prompt, max_new_tokens=max_new_tokens), list(tokenizer.encode(prompt)),
                        deadline_s=time.monotonic() + 600, decode=lambda ids: tokenizer.decode(list(ids)),
                        eos_ids=frozenset(eos_token_ids(model)), context_tokens=256, emit=lambda event: None,
                        signal_quantile=0.1)


def _run(batch: RunningBatch, schedule: dict[int, list[LiveSequence]]) -> None:
    """Admit schedule[k] before decode step k; decode until every row has finished."""
    step = 0
    while batch.live or any(k >= step for k in schedule):
        if schedule.get(step):
            batch.admit(schedule[step])
        batch.step()
        step += 1


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_a_sequence_joining_mid_batch_decodes_as_it_would_alone(tiny_ernie, tmp_path, moe):
    model, tokenizer = _load(make_tiny_ernie(tmp_path / "moe", moe=True) if moe else tiny_ernie)
    lengths = [40, 12, 30, 25]

    def fresh():
        return [_sequence(model, tokenizer, p, n) for p, n in zip(PROMPTS, lengths)]

    alone = []
    for sequence in fresh():
        _run(RunningBatch(model, 0), {0: [sequence]})
        alone.append(sequence.generated)
    static = fresh()
    _run(RunningBatch(model, 0), {0: static})
    # A longer prompt joins the one-token first row after 2 steps (the running cache is the
    # shorter side), a short one after 6 (the joiner is shorter); the second row leaves before
    # step 20, when the last one joins.
    joined = fresh()
    batch = RunningBatch(model, 0)
    widths = []
    for step in range(200):
        if step in (0, 2, 6, 20):
            batch.admit({0: joined[:1], 2: joined[1:2], 6: joined[2:3], 20: joined[3:]}[step])
            widths.append((len(batch.live), batch.mask.shape[1]))
        if not batch.live and step > 20:
            break
        batch.step()
    assert [s.generated for s in static] == alone
    assert [s.generated for s in joined] == alone
    assert all(len(g) == n for g, n in zip(alone, lengths))  # no early end token: every join happened mid-way
    assert [rows for rows, _ in widths] == [1, 2, 3, 3], widths
    prompt_lengths = [len(s.prompt_ids) for s in joined]
    assert widths[1][1] == prompt_lengths[1] > prompt_lengths[0] + 2, (widths, prompt_lengths)  # running side padded
    assert widths[2][1] > prompt_lengths[2] and widths[3][1] > prompt_lengths[3], (widths, prompt_lengths)  # joiner padded
    assert batch.cache is None and batch.mask.shape == (0, 0)


def test_regrouped_cache_is_as_long_as_the_longest_live_row(tiny_ernie):
    model, tokenizer = _load(tiny_ernie)
    long_row, short_row = (_sequence(model, tokenizer, PROMPTS[1], 6), _sequence(model, tokenizer, PROMPTS[0], 30))
    batch = RunningBatch(model, 0)
    batch.admit([long_row])
    batch.admit([short_row])
    assert is_joinable(batch.cache)
    assert batch.mask.shape[1] == len(long_row.prompt_ids) == batch.cache.layers[0].keys.shape[2]
    assert batch.mask.sum(dim=1).tolist() == [len(long_row.prompt_ids), len(short_row.prompt_ids)]
    while not long_row.done:
        batch.step()
    real = len(short_row.prompt_ids) + len(short_row.generated) - 1  # the last token is not fed yet
    assert batch.live == [short_row] and batch.mask.shape[1] == real == batch.cache.layers[0].keys.shape[2]
    assert batch.mask.min() == 1


def test_host_joins_a_running_batch_and_static_mode_waits(long_cloud):
    late = [GenerationRequest(prompt=PROMPTS[2], max_new_tokens=12), GenerationRequest(prompt=PROMPTS[3], max_new_tokens=20)]

    async def alone(host):
        return [await host.generate(r, timeout_s=60) for r in late]

    async def while_running(host, runner_tokens):
        runner = GenerationRequest(prompt=LONG_RUNNER, max_new_tokens=runner_tokens)
        events = host.stream(runner, timeout_s=120)
        await events.__anext__()  # the runner's first token: its batch is decoding
        results = await asyncio.gather(*(host.generate(r, timeout_s=60) for r in late))
        runner_result = None
        async for event in events:  # continuous: the runner is still going; leaving cancels it
            if isinstance(event, GenerationResult) or host.continuous_batching:
                runner_result = event
                break
        await events.aclose()
        return results, runner_result, host.stats

    expected = run_host(long_cloud, alone, max_batch_size=1)
    joined, _, stats = run_host(long_cloud, lambda host: while_running(host, 4000), max_batch_size=4)
    assert [r.token_ids for r in joined] == [r.token_ids for r in expected]
    assert stats.joined == 2 and max(stats.batch_sizes) >= 2, stats
    static, runner, static_stats = run_host(long_cloud, lambda host: while_running(host, 40), max_batch_size=4,
                                            continuous_batching=False)
    assert [r.token_ids for r in static] == [r.token_ids for r in expected]
    assert static_stats.joined == 0 and isinstance(runner, GenerationResult) and len(runner.token_ids) == 40


def test_cancel_and_deadline_in_a_joined_batch_free_the_place(long_cloud):
    short = [GenerationRequest(prompt=PROMPTS[2], max_new_tokens=10), GenerationRequest(prompt=PROMPTS[3], max_new_tokens=8)]

    async def alone(host):
        return [await host.generate(r, timeout_s=60) for r in short]

    async def body(host):
        runner = host.stream(GenerationRequest(prompt=LONG_RUNNER, max_new_tokens=4000), timeout_s=120)
        await runner.__anext__()
        # A second long row fills the batch (2 places); the first short request must wait for it.
        doomed = host.stream(GenerationRequest(prompt=PROMPTS[0], max_new_tokens=4000), timeout_s=120)
        await doomed.__anext__()
        waiting = asyncio.ensure_future(host.generate(short[0], timeout_s=60))
        await doomed.aclose()  # cancel: its place goes to the waiting request
        first = await waiting
        expired = await host.generate(GenerationRequest(prompt=PROMPTS[1], max_new_tokens=4000), timeout_s=0.5)
        second = await host.generate(short[1], timeout_s=60)
        runner_tokens = []
        async for event in runner:
            runner_tokens.append(event.token_id)
            if len(runner_tokens) >= 5:
                break
        await runner.aclose()
        while sum(host.stats.finished.values()) < 5:  # the runner's cancel is booked at its next step
            await asyncio.sleep(0.01)
        return first, expired, second, host.stats

    expected = run_host(long_cloud, alone, max_batch_size=1)
    first, expired, second, stats = run_host(long_cloud, body, max_batch_size=2)
    assert [first.token_ids, second.token_ids] == [r.token_ids for r in expected]
    assert expired.finish_reason == FINISH_DEADLINE
    assert stats.finished.get(FINISH_CANCELLED) == 2 and stats.finished.get(FINISH_DEADLINE) == 1, stats.finished
    assert stats.joined >= 3 and max(stats.batch_sizes) == 2, stats


def test_a_running_row_is_unaffected_by_rows_joining_and_leaving(long_cloud):
    async def body(host):
        tokens = []
        runner = host.stream(GenerationRequest(prompt=LONG_RUNNER, max_new_tokens=4000), timeout_s=120)
        async for event in runner:
            tokens.append(event.token_id)
            if len(tokens) in (3, 9):  # one joins and finishes, one is cancelled at once, one expires
                await host.generate(GenerationRequest(prompt=PROMPTS[2], max_new_tokens=5), timeout_s=60)
                joiner = host.stream(GenerationRequest(prompt=PROMPTS[0], max_new_tokens=4000), timeout_s=60)
                await joiner.__anext__()
                await joiner.aclose()
                await host.generate(GenerationRequest(prompt=PROMPTS[1], max_new_tokens=4000), timeout_s=0.2)
            if len(tokens) == 30:
                break
        await runner.aclose()
        return tokens, host.stats

    async def alone(host):
        return await host.generate(GenerationRequest(prompt=LONG_RUNNER, max_new_tokens=30), timeout_s=60)

    tokens, stats = run_host(long_cloud, body, max_batch_size=4)
    assert tokens == run_host(long_cloud, alone, max_batch_size=1).token_ids
    assert stats.joined == 6, stats


def test_a_cache_that_cannot_be_joined_falls_back_to_static_batching(tmp_path, caplog):
    import torch
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    from tests.helpers.llm_fixtures import make_tokenizer

    model_dir = tmp_path / "sliding"
    vocab = make_tokenizer(model_dir)
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16, max_position_embeddings=256,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
    MistralForCausalLM(config).eval().save_pretrained(model_dir)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(model_dir)
    model, _ = _load(model_dir)
    assert supports_joining(model, 0) == (False, "DynamicCache of DynamicSlidingWindowLayer")

    async def body(host):
        first = host.stream(GenerationRequest(prompt="the cat", max_new_tokens=12), timeout_s=60)
        await first.__anext__()
        late = await host.generate(GenerationRequest(prompt="what is", max_new_tokens=4), timeout_s=60)
        await first.aclose()
        return host.joins_running_batch, host.stats, late

    with caplog.at_level(logging.WARNING, logger="cloud_router.llm_host"):
        joins, stats, late = run_host(model_dir, body, max_batch_size=4)
    assert not joins and stats.joined == 0 and late.token_ids
    warnings = [r.getMessage() for r in caplog.records if "continuous batching is off" in r.getMessage()]
    assert len(warnings) == 1 and "DynamicSlidingWindowLayer" in warnings[0]


@pytest.mark.parametrize("continuous", [True, False])
def test_close_lets_queued_and_running_generations_finish(tiny_ernie, continuous):
    async def body(host):
        pending = [asyncio.ensure_future(host.generate(GenerationRequest(prompt=p, max_new_tokens=8), timeout_s=60))
                   for p in PROMPTS]
        await asyncio.sleep(0)  # every request is queued
        await host.close()
        return await asyncio.gather(*pending)

    results = run_host(tiny_ernie, body, max_batch_size=2, continuous_batching=continuous)
    assert all(r.finish_reason in ("length", "eos") for r in results)


def test_router_setting_turns_continuous_batching_off(tiny_ernie):
    from cloud_router.daemon import load_llm_hosts
    from cloud_router.settings import RouterSettings

    async def main(continuous):
        hosts = await load_llm_hosts(RouterSettings(llm_dirs=[tiny_ernie], llm_continuous_batching=continuous))
        try:
            return [(host.continuous_batching, host.joins_running_batch) for host in hosts.values()]
        finally:
            for host in hosts.values():
                await host.close()

    assert asyncio.run(main(True)) == [(True, True)]
    assert asyncio.run(main(False)) == [(False, False)]
