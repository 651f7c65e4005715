"""Split a batch of variable-length sequences into padded chunks that cost the least.

A transformer's forward pass over a padded chunk of n sequences costs about
`call_overhead_tokens + n * longest` token-steps: a fixed price per call (operator dispatch,
thread-pool barriers) plus the padded tokens. One chunk for a whole batch pays the fixed price
once but pads every short text to the longest; one chunk per text pads nothing but pays the
fixed price each time. Sorted by length, the best split into contiguous runs is a small
dynamic programme (measured: 0.14 ms for 32 texts, 0.5 ms for 64, next to the
tens of milliseconds of the forward passes it plans).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def plan_chunks(lengths: Sequence[int], *, call_overhead_tokens: float, max_chunk: int) -> list[np.ndarray]:
    """Indices into `lengths`, grouped into chunks of at most `max_chunk`, each chunk sorted
    by length; together they hold every index once. Minimises
    sum(call_overhead_tokens + len(chunk) * max length in chunk)."""
    if max_chunk < 1:
        raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
    if call_overhead_tokens < 0:
        raise ValueError(f"call_overhead_tokens must be >= 0, got {call_overhead_tokens}")
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(np.asarray(lengths), kind="stable")
    sorted_lengths = np.asarray(lengths)[order]
    # best[j]: least cost of the first j sorted items; cut[j]: where their last chunk starts.
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        longest = float(sorted_lengths[j - 1])  # sorted: the chunk's last item is its longest
        for i in range(max(0, j - max_chunk), j):
            cost = best[i] + call_overhead_tokens + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks = []
    j = n
    while j > 0:
        chunks.append(order[cut[j] : j])
        j = cut[j]
    return chunks[::-1]
