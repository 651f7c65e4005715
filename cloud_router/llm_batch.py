"""Decodes sequences together with a transformers causal LM and its KV cache; sequences join
between decode steps (continuous batching) and leave as soon as they finish.

Sequences admitted together are left-padded to one length and prefilled; the attention mask
hides the padding and the position ids count only real tokens, so each row computes what it
would alone. Sequences admitted while others decode are prefilled the same way, on their own,
and then joined to the running batch by `regroup_cache`: the shorter side's keys and values are
left-padded with zeros along the sequence axis (mask 0 there), so every row's cache has the same
length, and each row keeps its own position count. A row that finishes (end token, stop sequence,
length, deadline, cancel) leaves at once: its rows of the cache, mask and positions are dropped.

Joining needs a cache made of plain full-attention key/value tensors (transformers'
DynamicCache of DynamicLayers); `supports_joining` tells. With any other cache (sliding window,
hybrid, quantized, static, or a transformers without `cache.layers`) new sequences are admitted
only when the batch is empty (static batching).
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F

from shared.llm_sequence import LiveSequence


def cache_argument(model: Any) -> str:
    """The KV-cache keyword of the model's forward: `cache` from transformers 5.2x, before that
    `past_key_values` (also the name of the output field)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def is_joinable(cache: Any) -> bool:
    """Whether `regroup_cache` can join rows into `cache`: a transformers DynamicCache whose
    every layer is a filled, plain DynamicLayer (keys/values [batch, kv_heads, length, head_dim])."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # a transformers without per-layer cache objects
        return False
    layers = getattr(cache, "layers", None)
    return (type(cache) is DynamicCache and bool(layers)
            and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers))


@torch.inference_mode()
def supports_joining(model: Any, pad_id: int) -> tuple[bool, str]:
    """Run the model on one token and look at the cache it makes: whether sequences can join a
    running batch, and the cache's type (for the log)."""
    ids = torch.tensor([[pad_id]], dtype=torch.long)
    try:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.zeros_like(ids),
                    use_cache=True)
    except Exception as exc:  # any failure here only means: do not join
        return False, f"unknown: a one-token forward failed ({exc})"
    cache = getattr(out, cache_argument(model), None)
    layer_types = sorted({type(layer).__name__ for layer in getattr(cache, "layers", None) or ()})
    described = type(cache).__name__ + (f" of {', '.join(layer_types)}" if layer_types else "")
    return is_joinable(cache), described


def regroup_cache(cache: Any, mask: torch.Tensor, *, keep: Optional[torch.Tensor] = None,
                  joining: Optional[tuple[Any, torch.Tensor]] = None) -> tuple[Any, torch.Tensor]:
    """All the KV-cache surgery of the batch, in one place. `mask` is the [batch, length] attention
    mask over the cache's columns (1: a real token of that row, 0: padding).

    1. `keep` (row indices): only these rows stay (`batch_select_indices`; any cache type).
    2. `joining` (cache, mask) of newly prefilled rows: appended after the running rows. Each
       layer's keys and values are [batch, kv_heads, length, head_dim]; the shorter of the two
       sides is left-padded with zeros along `length`, and its mask with 0s, so both have the
       same length, then the rows are concatenated. Needs `is_joinable` caches (ValueError).
    3. On a joinable cache, leading columns that are padding in every row are cut off. A row's
       real tokens are always a contiguous run at the right end of the cache, so the cache stays
       as long as the longest live row, not as long as the batch has run.

    Positions are not stored in the cache (the caller passes position ids), so every row computes
    exactly what it would alone. `cache` is changed in place; returns it and the new mask.
    """
    if keep is not None:
        cache.batch_select_indices(keep)
        mask = mask[keep]
    if not is_joinable(cache):
        if joining is not None:
            raise ValueError(f"a {type(cache).__name__} cannot take joining rows (not plain DynamicLayers)")
        return cache, mask
    if joining is not None:
        new_cache, new_mask = joining
        if not is_joinable(new_cache) or len(new_cache.layers) != len(cache.layers):
            raise ValueError("the joining rows' cache does not match the running batch's")
        length = max(mask.shape[1], new_mask.shape[1])
        for layer, new_layer in zip(cache.layers, new_cache.layers):
            layer.keys = torch.cat([_pad_length(layer.keys, length), _pad_length(new_layer.keys, length)])
            layer.values = torch.cat([_pad_length(layer.values, length), _pad_length(new_layer.values, length)])
        mask = torch.cat([F.pad(mask, (length - mask.shape[1], 0)), F.pad(new_mask, (length - new_mask.shape[1], 0))])
    unused = mask.shape[1] - int(mask.sum(dim=1).max())
    if unused > 0:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
        mask = mask[:, unused:]
    return cache, mask


def _pad_length(states: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad [batch, heads, n, head_dim] with zeros to [batch, heads, length, head_dim]."""
    return F.pad(states, (0, 0, length - states.shape[2], 0))


class RunningBatch:
    """The sequences decoding together, their KV cache, attention mask (over the cache's columns),
    the next token of each row and that token's position. Used by one thread only."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.cache_arg = cache_argument(model)
        self.live: list[LiveSequence] = []
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.next_ids = torch.zeros(0, dtype=torch.long)
        self.next_positions = torch.zeros(0, dtype=torch.long)

    @torch.inference_mode()
    def admit(self, sequences: list[LiveSequence]) -> None:
        """Prefill `sequences` (left-padded among themselves) and choose their first tokens; those
        still going join the batch (with rows already running, the cache must be joinable)."""
        fresh = [seq for seq in sequences if not seq.check_interrupted()]
        if not fresh:
            return
        width = max(len(seq.prompt_ids) for seq in fresh)
        input_ids = torch.full((len(fresh), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(fresh), width), dtype=torch.long)
        for row, seq in enumerate(fresh):
            input_ids[row, width - len(seq.prompt_ids):] = torch.tensor(seq.prompt_ids, dtype=torch.long)
            mask[row, width - len(seq.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        next_ids = self._choose(fresh, out.logits[:, -1, :])
        keep = [row for row, seq in enumerate(fresh) if not seq.done]
        if not keep:
            return
        cache = getattr(out, self.cache_arg)
        index = torch.tensor(keep, dtype=torch.long)
        if len(keep) < len(fresh):
            cache, mask = regroup_cache(cache, mask, keep=index)
        next_ids, next_positions = next_ids[index], positions[index, -1] + 1
        fresh = [fresh[row] for row in keep]
        if not self.live:
            self.cache, self.mask = cache, mask
            self.next_ids, self.next_positions, self.live = next_ids, next_positions, fresh
            return
        self.cache, self.mask = regroup_cache(self.cache, self.mask, joining=(cache, mask))
        self.next_ids = torch.cat([self.next_ids, next_ids])
        self.next_positions = torch.cat([self.next_positions, next_positions])
        self.live = self.live + fresh

    @torch.inference_mode()
    def step(self) -> None:
        """One decode step for every live row; rows that finish leave the batch."""
        if not self.live:
            return
        self.mask = torch.cat([self.mask, torch.ones((len(self.live), 1), dtype=torch.long)], dim=-1)
        out = self.model(input_ids=self.next_ids.unsqueeze(-1), attention_mask=self.mask,
                         position_ids=self.next_positions.unsqueeze(-1), use_cache=True,
                         **{self.cache_arg: self.cache})
        self.cache = getattr(out, self.cache_arg)
        self.next_ids = self._choose(self.live, out.logits[:, -1, :])
        self.next_positions = self.next_positions + 1
        keep = [row for row, seq in enumerate(self.live) if not seq.done]
        if not keep:
            self.clear()
        elif len(keep) < len(self.live):
            index = torch.tensor(keep, dtype=torch.long)
            self.cache, self.mask = regroup_cache(self.cache, self.mask, keep=index)
            self.next_ids, self.next_positions = self.next_ids[index], self.next_positions[index]
            self.live = [self.live[row] for row in keep]

    def clear(self) -> list[LiveSequence]:
        """Forget every row (after an error); returns the rows that were live."""
        dropped, self.live, self.cache = self.live, [], None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.next_ids = self.next_positions = torch.zeros(0, dtype=torch.long)
        return dropped

    def _choose(self, sequences: list[LiveSequence], logits: torch.Tensor) -> torch.Tensor:
        rows = logits.float().numpy()
        now_s = time.monotonic()
        return torch.tensor([seq.step(rows[row]) if not seq.check_interrupted(now_s) else self.pad_id
                             for row, seq in enumerate(sequences)], dtype=torch.long)
