"""plan_chunks: every index once, chunks sorted and bounded, and the least cost (against brute force)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cloud_router.length_buckets import plan_chunks


def cost(lengths, chunks, overhead):
    return sum(overhead + len(c) * max(lengths[i] for i in c) for c in chunks)


def brute_force_cost(sorted_lengths, overhead, max_chunk):
    n = len(sorted_lengths)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        chunks = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
        if all(len(c) <= max_chunk for c in chunks):
            best = min(best, cost(sorted_lengths, chunks, overhead))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("overhead", [0.0, 5.0, 40.0, 1e4])
def test_partition_is_complete_sorted_bounded_and_cheapest(seed, overhead):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=int(rng.integers(1, 11))).tolist()
    max_chunk = int(rng.integers(1, 6))
    chunks = plan_chunks(lengths, call_overhead_tokens=overhead, max_chunk=max_chunk)
    flat = np.concatenate(chunks)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(c) <= max_chunk for c in chunks)
    assert [lengths[i] for i in flat] == sorted(lengths)  # chunks in order, each sorted
    assert cost(lengths, chunks, overhead) == pytest.approx(brute_force_cost(sorted(lengths), overhead, max_chunk))


def test_extremes():
    lengths = [5, 30, 6, 31, 7]
    assert len(plan_chunks(lengths, call_overhead_tokens=1e9, max_chunk=64)) == 1
    assert len(plan_chunks(lengths, call_overhead_tokens=0.0, max_chunk=64)) >= 2
    assert plan_chunks([], call_overhead_tokens=10, max_chunk=4) == []


@pytest.mark.parametrize("kwargs", [{"call_overhead_tokens": 1.0, "max_chunk": 0},
                                    {"call_overhead_tokens": -1.0, "max_chunk": 4}])
def test_bad_arguments_are_clear_errors(kwargs):
    with pytest.raises(ValueError):
        plan_chunks([1, 2], **kwargs)
