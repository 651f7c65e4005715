"""A closed-loop gRPC load generator: N requests in flight for a fixed time, latencies kept.

Used by the benchmarks so the echo baseline and the daemons are driven the same way.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np


@dataclass
class LoadResult:
    requests: int
    errors: int
    duration_s: float
    latencies_ms: np.ndarray

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")


async def closed_loop(call: Callable[[int], Awaitable[object]], *, concurrency: int, duration_s: float,
                      warmup_s: float = 0.5) -> LoadResult:
    """Keep `concurrency` calls in flight for `warmup_s + duration_s`; count the calls that finish
    inside the window (after the warm-up), whenever they started. (Counting only calls that also
    started inside it would miss about one latency's worth of answers: at 64 in flight and
    0.3 s latency, 8 % of a 4 s window.)"""
    latencies: list[float] = []
    errors = 0
    counter = 0
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + duration_s

    async def worker() -> None:
        nonlocal errors, counter
        while True:
            now = time.perf_counter()
            if now >= window_end:
                return
            i = counter
            counter += 1
            try:
                await call(i)
            except Exception:
                if window_start <= time.perf_counter() <= window_end:
                    errors += 1
                continue
            done = time.perf_counter()
            if window_start <= done <= window_end:
                latencies.append((done - now) * 1000.0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), errors, duration_s, np.asarray(latencies))


def closed_loop_threads(call: Callable[[int], object], *, concurrency: int, duration_s: float,
                        warmup_s: float = 0.5) -> LoadResult:
    """`closed_loop` with one thread per in-flight call, for blocking clients (a blocking gRPC
    call costs the client less CPU than an asyncio one, so it disturbs the server less)."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    counter = iter(range(1 << 62))
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + duration_s

    def worker(k: int) -> None:
        mine = latencies[k]
        while True:
            now = time.perf_counter()
            if now >= window_end:
                return
            try:
                call(next(counter))
            except Exception:
                if window_start <= time.perf_counter() <= window_end:
                    errors[k] += 1
                continue
            done = time.perf_counter()
            if window_start <= done <= window_end:
                mine.append((done - now) * 1000.0)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = np.asarray([x for mine in latencies for x in mine])
    return LoadResult(len(merged), sum(errors), duration_s, merged)


def sequential_latencies_ms(call: Callable[[int], object], *, count: int, warmup: int = 50) -> np.ndarray:
    """One call at a time (no queueing): the latency floor of a path."""
    for i in range(warmup):
        call(i)
    out = np.empty(count)
    for i in range(count):
        started = time.perf_counter()
        call(i)
        out[i] = (time.perf_counter() - started) * 1000.0
    return out
