"""Calibrates the generation deferral threshold: the edge LM and the cloud LM continue the same
held-out prompts (greedy), the cloud's output is the label, and Learn-then-Test (or CRC, or a
deferral rate) from `shared.calibration` picks the threshold on the edge's decision score.

Agreement is an exact match of the generated text, or a similarity of at least
`similarity` (difflib's ratio of the two texts, 0..1) when one is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from shared.llm_policy import LLMPolicy
from shared.llm_request import GenerationRequest, GenerationResult


@dataclasses.dataclass(frozen=True)
class LabelledGenerations:
    prompts: list[str]
    edge: list[GenerationResult]
    cloud: list[GenerationResult]
    agree: np.ndarray            # bool [N]


def texts_agree(edge_text: str, cloud_text: str, similarity: Optional[float]) -> bool:
    if similarity is None:
        return edge_text.strip() == cloud_text.strip()
    return difflib.SequenceMatcher(None, edge_text, cloud_text, autojunk=False).ratio() >= similarity


def label_generations(edge_dir: str | Path, cloud_dir: str | Path, prompts: Sequence[str], *, max_new_tokens: int,
                      similarity: Optional[float] = None, timeout_s: float = 600.0) -> LabelledGenerations:
    """Greedy generations of every prompt on both sides, and whether they agree."""
    from cloud_router.llm_host import CausalLMHost
    from edge_agent.llm_runtime import OnnxCausalLM

    async def both() -> tuple[list[GenerationResult], list[GenerationResult]]:
        host = CausalLMHost(cloud_dir, max_batch_size=8, max_delay_ms=20)
        await host.load()
        edge = OnnxCausalLM(edge_dir)
        edge.load()
        try:
            requests = [GenerationRequest(prompt=p, max_new_tokens=max_new_tokens) for p in prompts]
            cloud = list(await asyncio.gather(*(host.generate(r, timeout_s) for r in requests)))
            local = [await edge.generate(r, timeout_s) for r in requests]
            return local, cloud
        finally:
            await host.close()
            edge.close()

    local, cloud = asyncio.run(both())
    agree = np.array([texts_agree(e.text, c.text, similarity) for e, c in zip(local, cloud)], dtype=bool)
    return LabelledGenerations(prompts=list(prompts), edge=local, cloud=cloud, agree=agree)


def calibrate_generation(labelled: LabelledGenerations, template: LLMPolicy, *, method: str = "ltt",
                         epsilon: Optional[float] = None, delta: Optional[float] = None,
                         target_deferral_rate: Optional[float] = None) -> LLMPolicy:
    """`template` with the certified threshold and what was certified in `guarantee`."""
    from edgecascade.offline.calibration import calibrate

    scores = np.array([template.decision_score(result.top_probs) for result in labelled.edge], dtype=np.float64)
    # The shared calibrators count a loss where "edge label != cloud label": disagreement is label 1 against 0.
    edge_label = (~labelled.agree).astype(np.int64)
    result = calibrate(scores, edge_label, np.zeros_like(edge_label), method=method, epsilon=epsilon,
                       delta=delta if method == "ltt" else None, target_deferral_rate=target_deferral_rate)
    guarantee = result.guarantee()
    guarantee["loss"] = "accepted by the edge and the edge's generation disagrees with the cloud's"
    guarantee["agreement_rate"] = float(labelled.agree.mean())
    return dataclasses.replace(template, threshold=float(min(1.0, max(0.0, result.threshold))), guarantee=guarantee)
