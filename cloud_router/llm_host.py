"""The cloud's causal-LM host: any Hugging Face checkpoint directory that transformers'
AutoModelForCausalLM loads (Ernie4_5ForCausalLM, Ernie4_5_MoeForCausalLM, Llama, Qwen, ...).

Concurrent requests are batched on one model thread. When nothing is decoding, it takes up to
`max_batch_size` queued requests, waiting at most `max_delay_ms` after the first for others.
With `continuous_batching` (the default), requests that arrive while a batch decodes join it
between two decode steps, as long as it has fewer than `max_batch_size` rows: they are prefilled
and their KV cache is joined to the running one (`llm_batch`), so a late request's first token
does not wait for the batch to end. A model whose KV cache cannot be joined (sliding-window,
hybrid, quantized caches) falls back to static batching, logged once at load: requests that
arrive while a batch runs wait for it to finish. Tokens stream to each caller as they are
chosen; a finished row, or the caller's cancel or deadline, takes its row out of the batch at
once and frees its place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Union

from cloud_router.llm_checkpoint import CheckpointInfo, inspect_checkpoint
from shared.errors import ConfigError, DeadlineError, ModelError, OverloadedError, UnavailableError
from shared.llm_decoding import DEFAULT_SIGNAL_QUANTILE
from shared.llm_events import EventPipe
from shared.llm_request import MAX_NEW_TOKENS_LIMIT, GenerationRequest, GenerationResult, check_prompt_fits, validated
from shared.llm_sequence import LiveSequence, TokenEvent

log = logging.getLogger(__name__)
Event = Union[TokenEvent, GenerationResult]


@dataclasses.dataclass
class HostStats:
    """What the host has done, for tests, metrics and the benchmark."""

    batch_sizes: list[int] = dataclasses.field(default_factory=list)  # rows decoding after each admission
    joined: int = 0  # requests that joined a batch already decoding (continuous batching)
    finished: dict[str, int] = dataclasses.field(default_factory=dict)   # finish reason -> count
    generated_tokens: int = 0


class CausalLMHost:
    """`load()` first (heavy, in a thread); then `stream()` or `generate()`; `close()` at the end."""

    def __init__(self, model_dir: str | Path, *, name: Optional[str] = None, max_batch_size: int = 8,
                 max_delay_ms: float = 5.0, max_queue: int = 256, max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT,
                 signal_quantile: float = DEFAULT_SIGNAL_QUANTILE, torch_threads: Optional[int] = None,
                 continuous_batching: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.max_new_tokens_limit = max_new_tokens_limit
        self.signal_quantile = signal_quantile
        self.torch_threads = torch_threads
        self.continuous_batching = continuous_batching  # asked for; `joins_running_batch` says if it is on
        self.joins_running_batch = False
        self.info: Optional[CheckpointInfo] = None
        self.stats = HostStats()
        self.ready = False
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._pad_id = 0
        self._queue: "queue.Queue[Optional[LiveSequence]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def load(self) -> None:
        self.info = inspect_checkpoint(self.model_dir)
        await asyncio.get_running_loop().run_in_executor(None, self._load_blocking)
        self._thread = threading.Thread(target=self._work, name=f"llm-{self.name}", daemon=True)
        self._thread.start()
        self.ready = True
        log.info("causal LM %s loaded from %s (%s, context %d tokens, batches of up to %d, %s batching)", self.name,
                 self.model_dir, self.info.architecture, self.info.context_tokens, self.max_batch_size,
                 "continuous" if self.joins_running_batch else "static")

    def _load_blocking(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            self._model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"causal-LM checkpoint {self.model_dir}: transformers cannot load it: {exc}") from None
        self._model.eval()
        self._eos_ids = frozenset(eos_token_ids(self._model))
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (min(self._eos_ids) if self._eos_ids else 0))
        if self.continuous_batching and self.max_batch_size > 1:
            from cloud_router.llm_batch import supports_joining

            joinable, cache_type = supports_joining(self._model, self._pad_id)
            self.joins_running_batch = joinable
            if not joinable:
                log.warning("causal LM %s: its KV cache (%s) cannot be joined, so continuous batching is off: "
                            "requests arriving while a batch decodes wait for it to finish", self.name, cache_type)

    async def close(self) -> None:
        self.ready = False
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    # -- requests --------------------------------------------------------------------------------
    @property
    def context_tokens(self) -> int:
        return self.info.context_tokens if self.info else 0

    def encode(self, prompt: str) -> list[int]:
        return list(self._tokenizer.encode(prompt))

    def decode(self, token_ids) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=True)

    async def stream(self, request: GenerationRequest, timeout_s: float) -> AsyncIterator[Event]:
        """TokenEvents as the tokens are chosen, then one GenerationResult. Leaving the loop early
        (or being cancelled) takes the request out of its batch."""
        if not self.ready:
            raise UnavailableError(f"model {self.name} is not loaded")
        request = validated(request, max_new_tokens_limit=self.max_new_tokens_limit)
        if timeout_s <= 0:
            raise DeadlineError("deadline passed before generation started")
        prompt_ids = self.encode(request.prompt)
        check_prompt_fits(len(prompt_ids), request.max_new_tokens, self.context_tokens)
        if self._queue.qsize() >= self.max_queue:
            raise OverloadedError(f"generation queue is full ({self.max_queue} waiting); retry later")
        pipe = EventPipe()
        sequence = LiveSequence(request, prompt_ids, deadline_s=time.monotonic() + timeout_s, decode=self.decode,
                                eos_ids=self._eos_ids, context_tokens=self.context_tokens, emit=pipe.emit,
                                signal_quantile=self.signal_quantile)
        self._queue.put(sequence)
        try:
            async for event in pipe.events():
                yield event
        finally:
            sequence.cancelled.set()  # a no-op for a finished sequence; stops one the caller left

    async def generate(self, request: GenerationRequest, timeout_s: float) -> GenerationResult:
        async for event in self.stream(request, timeout_s):
            if isinstance(event, GenerationResult):
                return event
        raise ModelError("generation ended without a result")  # unreachable: stream always ends with one

    # -- the model thread ------------------------------------------------------------------------
    def _next_batch(self) -> Optional[list[LiveSequence]]:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        fill_until = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch_size:
            remaining_s = fill_until - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining_s) if remaining_s > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # seen again after this batch
                break
            batch.append(item)
        return batch

    def _queued(self, room: int) -> tuple[list[LiveSequence], bool]:
        """Up to `room` requests already queued (no waiting), and whether close() was asked for."""
        arrivals: list[LiveSequence] = []
        while len(arrivals) < room:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return arrivals, True
            arrivals.append(item)
        return arrivals, False

    def _work(self) -> None:
        from cloud_router.llm_batch import RunningBatch

        batch = RunningBatch(self._model, self._pad_id)
        taken: list[LiveSequence] = []  # taken from the queue, not yet booked in the stats
        closing = False
        while True:
            if not batch.live:
                arrivals = [] if closing else self._next_batch()
                if not arrivals:
                    return  # None: close() was asked for
            elif self.joins_running_batch and not closing:
                arrivals, closing = self._queued(self.max_batch_size - len(batch.live))
            else:
                arrivals = []
            taken.extend(arrivals)
            try:
                if arrivals:
                    joining = bool(batch.live)
                    batch.admit(arrivals)
                    self.stats.joined += len(arrivals) if joining else 0
                    self.stats.batch_sizes.append(len(batch.live))
                    del self.stats.batch_sizes[:-1000]
                batch.step()
            except Exception as exc:
                log.exception("causal LM %s failed on a batch of %d", self.name, len(batch.live) + len(arrivals))
                batch.clear()
                for sequence in taken:
                    if not sequence.done:
                        sequence.finish_reason = "error"
                        sequence.emit(ModelError(f"model {self.name} failed while generating: {exc}"))
            self._book(taken)
            taken = [sequence for sequence in taken if not sequence.done]

    def _book(self, sequences: list[LiveSequence]) -> None:
        for sequence in sequences:
            if sequence.done:
                reason = sequence.finish_reason or "error"
                self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
                self.stats.generated_tokens += len(sequence.generated)


def eos_token_ids(model: Any) -> list[int]:
    """The end-of-sequence ids from the generation config (or the model config)."""
    for config in (getattr(model, "generation_config", None), model.config):
        eos = getattr(config, "eos_token_id", None) if config is not None else None
        if eos is not None:
            return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
    return []
