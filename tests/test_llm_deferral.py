"""Deferral for generation: the calibration score is exactly what the online early-deferral rule
sees; a forced threshold makes the edge stop early; `edgecascade calibrate --llm-prompts`
certifies a threshold against the cloud's output, or refuses clearly."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from edge_agent.llm_runtime import OnnxCausalLM
from edgecascade.cli import main as cli_main
from edgecascade.offline.llm_calibration import texts_agree
from shared.llm_decoding import SignalTracker
from shared.llm_policy import LLMPolicy, load_llm_policy
from shared.llm_request import FINISH_DEFERRED, GenerationRequest
from tests.helpers.llm_fixtures import make_tiny_ernie

PROMPTS = ["the cat sat", "what is the balance", "how do I reset the card", "the dog", "edge models",
           "héllo", "the mat and", "my account today", "cloud answers", "reset the pin", "sat on the log",
           "easy questions"]


@pytest.mark.parametrize("signal", ["min_top_prob", "quantile_top_prob"])
def test_decision_score_is_what_the_online_rule_decides(signal):
    rng = np.random.default_rng(3)
    for _ in range(200):
        probs = rng.uniform(0.05, 1.0, size=int(rng.integers(1, 20)))
        policy = LLMPolicy(model_name="m", threshold=float(rng.uniform(0.1, 0.9)), signal=signal, quantile=0.25,
                           min_tokens=int(rng.integers(1, 6)))
        tracker, deferred = SignalTracker(policy.quantile), False
        for p in probs:
            tracker.add(float(p))
            if policy.should_defer(tracker.signals()):
                deferred = True
                break
        accepted = not deferred and policy.accepts_final(tracker.signals())
        assert accepted == (policy.decision_score(probs) >= policy.threshold)


def test_similarity_agreement():
    assert texts_agree(" same text ", "same text", None)
    assert not texts_agree("same text", "same test", None)
    assert texts_agree("same text", "same test", 0.8)


def test_forced_threshold_defers_early_and_stops_compute(tiny_edge):
    policy = LLMPolicy(model_name="tiny", threshold=1.0, min_tokens=3)

    async def body():
        model = OnnxCausalLM(tiny_edge)
        model.load()
        try:
            return await model.generate(GenerationRequest(prompt="the cat", max_new_tokens=40), 30,
                                        should_defer=policy.should_defer)
        finally:
            model.close()

    result = asyncio.run(body())
    assert result.finish_reason == FINISH_DEFERRED
    assert result.signals.tokens == 3 and len(result.token_ids) == 2   # the third token was never used


def test_calibrate_llm_certifies_against_the_cloud(tiny_ernie, tiny_edge, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS), encoding="utf-8")
    common = ["calibrate", "--llm-prompts", str(prompts), "--edge-llm", str(tiny_edge), "--max-new-tokens", "6"]
    # The edge is an export of the cloud checkpoint itself: they always agree, nothing needs deferring.
    assert cli_main([*common, "--cloud-llm", str(tiny_ernie), "--epsilon", "0.2", "--delta", "0.1"]) == 0
    policy = load_llm_policy(tiny_edge)
    assert policy.guarantee["method"] == "ltt" and policy.guarantee["agreement_rate"] == 1.0
    assert policy.guarantee["deferral_rate"] == 0.0
    assert "12 prompts: the edge agrees with the cloud on 12" in capsys.readouterr().out

    other = make_tiny_ernie(tmp_path / "other-cloud", seed=5)
    # Another model in the cloud: they disagree, so LTT cannot certify and says why (exit 2, nothing written).
    (tiny_edge / "llm_policy.json").unlink()
    assert cli_main([*common, "--cloud-llm", str(other), "--epsilon", "0.2", "--delta", "0.1"]) == 2
    assert "no threshold certified" in capsys.readouterr().err
    assert load_llm_policy(tiny_edge) is None
    # A deferral-rate target still gives a threshold.
    assert cli_main([*common, "--cloud-llm", str(other), "--method", "rate", "--target-deferral-rate", "0.5"]) == 0
    saved = json.loads((tiny_edge / "llm_policy.json").read_text())
    assert saved["guarantee"]["deferral_rate"] <= 0.5
    (tiny_edge / "llm_policy.json").unlink()
