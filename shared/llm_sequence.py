"""One generation in flight: its request, its per-token state, and the way its tokens and its
end reach the caller. Torch- and onnxruntime-free; the cloud's `llm_batch` and the edge's
`llm_runtime` drive it with their models' logits.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Optional, Sequence

from shared.llm_decoding import SignalTracker, TextAssembler, TokenChooser
from shared.llm_request import FINISH_CANCELLED, FINISH_DEADLINE, FINISH_DEFERRED, FINISH_EOS, FINISH_LENGTH, FINISH_STOP, GenerationRequest, GenerationResult, SequenceSignals


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    """New text (possibly empty while a character or a stop sequence is pending) and the token."""

    text: str
    token_id: Optional[int]  # None for held-back text released at the end


class LiveSequence:
    """A request being generated. `emit` receives TokenEvents, then one GenerationResult."""

    def __init__(self, request: GenerationRequest, prompt_ids: list[int], *, deadline_s: float,
                 decode: Callable[[Sequence[int]], str], eos_ids: frozenset[int], context_tokens: int,
                 emit: Callable[[Any], None], signal_quantile: float,
                 should_defer: Optional[Callable[[SequenceSignals], bool]] = None) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self.deadline_s = deadline_s          # time.monotonic() clock
        self.eos_ids = eos_ids
        self.context_tokens = context_tokens
        self.emit = emit
        self.should_defer = should_defer      # the edge's early deferral, asked after every token
        self.cancelled = threading.Event()
        self.chooser = TokenChooser(request)
        self.tracker = SignalTracker(signal_quantile)
        self.text = TextAssembler(decode, request.stop)
        self.generated: list[int] = []
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def check_interrupted(self, now_s: float | None = None) -> bool:
        """Finish the sequence if it was cancelled or its deadline passed; whether it did."""
        if self.done:
            return True
        if self.cancelled.is_set():
            self.finish(FINISH_CANCELLED)
        elif (time.monotonic() if now_s is None else now_s) >= self.deadline_s:
            self.finish(FINISH_DEADLINE)
        return self.done

    def step(self, logits) -> int:
        """Choose the next token from a [vocab] numpy row, stream it, and finish if it ends the
        sequence. Returns the token id (fed back to the model while the sequence goes on)."""
        token, top_prob = self.chooser.choose(logits)
        self.tracker.add(top_prob)
        if self.should_defer is not None and self.should_defer(self.tracker.signals()):
            self.finish(FINISH_DEFERRED)
            return token
        if token in self.eos_ids:
            self.finish(FINISH_EOS)
            return token
        self.generated.append(token)
        delta = self.text.push(token)
        self.emit(TokenEvent(delta, token))
        if self.text.stopped:
            self.finish(FINISH_STOP)
        elif len(self.generated) >= self.request.max_new_tokens:
            self.finish(FINISH_LENGTH)
        elif len(self.prompt_ids) + len(self.generated) >= self.context_tokens:
            self.finish(FINISH_LENGTH)
        return token

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.finish_reason = reason
        tail = self.text.finish() if reason != FINISH_DEFERRED else ""  # deferred text is withdrawn anyway
        if tail:
            self.emit(TokenEvent(tail, None))
        self.emit(GenerationResult(text=self.text.text, token_ids=list(self.generated), finish_reason=reason,
                                   prompt_tokens=len(self.prompt_ids), signals=self.tracker.signals(),
                                   top_probs=list(self.tracker.top_probs)))
