"""How closely an exported edge LM follows its source checkpoint: greedy decoding of the same
prompts with onnxruntime (the edge runtime) and with transformers (the cloud host), compared
token by token. An fp32 export should agree exactly; a quantized one gets a measured rate."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Sequence

from shared.llm_request import GenerationRequest

#: Prompts used when the caller gives none.
DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Edge devices are useful because",
                   "1, 2, 3, 4,", "Translate to German: good morning")


@dataclasses.dataclass(frozen=True)
class Agreement:
    prompts: int
    exact_sequences: int         # prompts whose greedy token sequences are identical
    prefix_agreement: float      # mean share of the reference tokens matched before the first difference

    @property
    def exact_rate(self) -> float:
        return self.exact_sequences / self.prompts if self.prompts else 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    size = 0
    for x, y in zip(a, b):
        if x != y:
            break
        size += 1
    return size


def greedy_agreement(src_dir: str | Path, edge_dir: str | Path, prompts: Sequence[str] = DEFAULT_PROMPTS,
                     max_new_tokens: int = 32, timeout_s: float = 600.0) -> Agreement:
    from cloud_router.llm_host import CausalLMHost
    from edge_agent.llm_runtime import OnnxCausalLM

    async def both() -> tuple[list, list]:
        host = CausalLMHost(src_dir, max_batch_size=1)
        await host.load()
        edge = OnnxCausalLM(edge_dir)
        edge.load()
        try:
            requests = [GenerationRequest(prompt=p, max_new_tokens=max_new_tokens) for p in prompts]
            cloud = [await host.generate(r, timeout_s) for r in requests]
            local = [await edge.generate(r, timeout_s) for r in requests]
            return cloud, local
        finally:
            await host.close()
            edge.close()

    cloud, local = asyncio.run(both())
    exact = sum(c.token_ids == e.token_ids for c, e in zip(cloud, local))
    shares = [common_prefix(c.token_ids, e.token_ids) / max(1, len(c.token_ids)) for c, e in zip(cloud, local)]
    return Agreement(prompts=len(prompts), exact_sequences=exact, prefix_agreement=sum(shares) / max(1, len(shares)))
