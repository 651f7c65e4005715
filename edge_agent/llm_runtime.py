"""The edge's causal LM: an `edgecascade export-llm` directory run with onnxruntime and the
`tokenizers` library. Never imports torch or transformers.

One request decodes on its own (batch of one, so no padding): the prompt in one run, then one
token per run with the KV cache fed back as `past_key_values.N.key/value`. Each step's logits go
through the same token choice, signals, stop sequences and deadline as on the cloud
(`shared.llm_sequence`), plus the early deferral check the cascade passes in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, Sequence

import numpy as np

from shared.errors import ConfigError, DeadlineError, ModelError, UnavailableError
from shared.llm_card import LLMCard, load_llm_card
from shared.llm_decoding import DEFAULT_SIGNAL_QUANTILE
from shared.llm_events import EventPipe
from shared.llm_request import MAX_NEW_TOKENS_LIMIT, GenerationRequest, GenerationResult, SequenceSignals, check_prompt_fits, validated
from shared.llm_sequence import LiveSequence
from shared.onnx_model import resolve_providers

log = logging.getLogger(__name__)


class OnnxCausalLM:
    """`load()` first; then `stream()` or `generate()`. `max_concurrent` requests decode at once."""

    def __init__(self, model_dir: str | Path, *, providers: Sequence[str] = ("cpu",), intra_op_threads: int = 0,
                 max_concurrent: int = 2, max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT,
                 signal_quantile: float = DEFAULT_SIGNAL_QUANTILE) -> None:
        self.model_dir = Path(model_dir)
        self.providers = list(providers)
        self.intra_op_threads = intra_op_threads
        self.max_new_tokens_limit = max_new_tokens_limit
        self.signal_quantile = signal_quantile
        self.card: Optional[LLMCard] = None
        self.session: Any = None
        self.tokenizer: Any = None
        self.ready = False
        self._executor = ThreadPoolExecutor(max_workers=max(1, max_concurrent), thread_name_prefix="edge-llm")
        self._past_names: list[str] = []
        self._present_names: list[str] = []

    @property
    def name(self) -> str:
        return self.card.name if self.card else self.model_dir.name

    def load(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.card = load_llm_card(self.model_dir)
        for needed in (self.card.file, "tokenizer.json"):
            if not (self.model_dir / needed).is_file():
                raise ConfigError(f"edge LM directory {self.model_dir}: {needed} is missing")
        options = ort.SessionOptions()
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        try:
            self.session = ort.InferenceSession(str(self.model_dir / self.card.file), sess_options=options,
                                                providers=resolve_providers(self.providers))
            self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        except Exception as exc:
            raise ConfigError(f"edge LM directory {self.model_dir}: cannot load: {exc}") from None
        inputs = {i.name for i in self.session.get_inputs()}
        self._past_names = [f"past_key_values.{layer}.{kind}" for layer in range(self.card.num_layers)
                            for kind in ("key", "value")]
        missing = [name for name in ["input_ids", "attention_mask", *self._past_names] if name not in inputs]
        if missing:
            raise ConfigError(f"edge LM directory {self.model_dir}: the ONNX graph lacks inputs {', '.join(missing)}")
        self._present_names = [name.replace("past_key_values", "present") for name in self._past_names]
        self.ready = True

    def close(self) -> None:
        self.ready = False
        self._executor.shutdown(wait=True)

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer.encode(prompt).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    async def stream(self, request: GenerationRequest, timeout_s: float,
                     should_defer: Optional[Callable[[SequenceSignals], bool]] = None) -> AsyncIterator[Any]:
        """TokenEvents as tokens are chosen, then a GenerationResult (finish_reason `deferred`
        when `should_defer` stopped it). Leaving the loop early stops the decoding."""
        if not self.ready:
            raise UnavailableError(f"edge LM {self.name} is not loaded")
        request = validated(request, max_new_tokens_limit=self.max_new_tokens_limit)
        if timeout_s <= 0:
            raise DeadlineError("deadline passed before generation started")
        prompt_ids = self.encode(request.prompt)
        check_prompt_fits(len(prompt_ids), request.max_new_tokens, self.card.context_tokens)
        pipe = EventPipe()
        sequence = LiveSequence(request, prompt_ids, deadline_s=time.monotonic() + timeout_s, decode=self.decode,
                                eos_ids=frozenset(self.card.eos_token_ids), context_tokens=self.card.context_tokens,
                                emit=pipe.emit, signal_quantile=self.signal_quantile, should_defer=should_defer)
        asyncio.get_running_loop().run_in_executor(self._executor, self._run, sequence, pipe)
        try:
            async for event in pipe.events():
                yield event
        finally:
            sequence.cancelled.set()

    async def generate(self, request: GenerationRequest, timeout_s: float,
                       should_defer: Optional[Callable[[SequenceSignals], bool]] = None) -> GenerationResult:
        async for event in self.stream(request, timeout_s, should_defer):
            if isinstance(event, GenerationResult):
                return event
        raise ModelError("generation ended without a result")

    def _run(self, sequence: LiveSequence, pipe: EventPipe) -> None:
        try:
            self.decode_sequence(sequence)
        except Exception as exc:
            log.exception("edge LM %s failed while generating", self.name)
            if not sequence.done:
                sequence.finish_reason = "error"
                pipe.emit(ModelError(f"edge LM {self.name} failed while generating: {exc}"))

    def decode_sequence(self, sequence: LiveSequence) -> None:
        """Blocking: run one sequence to its end on this thread."""
        card = self.card
        empty = np.zeros((1, card.kv_heads, 0, card.head_dim), dtype=np.float32)
        past = {name: empty for name in self._past_names}
        input_ids = np.asarray([sequence.prompt_ids], dtype=np.int64)
        total = input_ids.shape[1]
        while not sequence.check_interrupted():
            outputs = self.session.run(["logits", *self._present_names],
                                       {"input_ids": input_ids, "attention_mask": np.ones((1, total), dtype=np.int64),
                                        **past})
            if sequence.check_interrupted():
                return
            token = sequence.step(outputs[0][0, -1])
            if sequence.done:
                return
            past = dict(zip(self._past_names, outputs[1:]))
            input_ids = np.asarray([[token]], dtype=np.int64)
            total += 1
