"""Decodes a batch of sequences together with a transformers causal LM and its KV cache.

Prompts are left-padded to one length; the attention mask hides the padding and the position
ids count only real tokens, so each row computes what it would alone. A row that finishes
(end token, stop sequence, length, deadline, cancel) leaves the batch at once: its rows of the
cache, mask and positions are dropped, so it costs nothing more.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch

from shared.llm_sequence import LiveSequence


@torch.inference_mode()
def decode_batch(model: Any, sequences: list[LiveSequence], pad_id: int) -> None:
    """Run `sequences` to their end; every one of them is finished when this returns."""
    live = [seq for seq in sequences if not seq.check_interrupted()]
    if not live:
        return
    width = max(len(seq.prompt_ids) for seq in live)
    input_ids = torch.full((len(live), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(live), width), dtype=torch.long)
    for row, seq in enumerate(live):
        input_ids[row, width - len(seq.prompt_ids):] = torch.tensor(seq.prompt_ids, dtype=torch.long)
        mask[row, width - len(seq.prompt_ids):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache_arg = cache_argument(model)
    cache = None
    while live:
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        logits = out.logits[:, -1, :].float().numpy()
        now_s = time.monotonic()
        next_ids = [seq.step(logits[row]) if not seq.check_interrupted(now_s) else pad_id
                    for row, seq in enumerate(live)]
        keep = [row for row, seq in enumerate(live) if not seq.done]
        if not keep:
            return
        if len(keep) < len(live):
            index = torch.tensor(keep, dtype=torch.long)
            cache.batch_select_indices(index)
            mask, positions = mask[index], positions[index]
            live = [live[row] for row in keep]
            next_ids = [next_ids[row] for row in keep]
        input_ids = torch.tensor(next_ids, dtype=torch.long).unsqueeze(-1)
        mask = torch.cat([mask, torch.ones((len(live), 1), dtype=torch.long)], dim=-1)
        positions = positions[:, -1:] + 1


def cache_argument(model: Any) -> str:
    """The KV-cache keyword of the model's forward: `cache` from transformers 5.2x, before that
    `past_key_values` (also the name of the output field)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
