"""The per-token steps both generators share, over numpy logits: choosing the next token
(greedy or sampled), tracking the confidence signals, and turning token ids into text deltas
with stop sequences. No torch, no onnxruntime.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from shared.llm_request import GenerationRequest, SequenceSignals

#: The default low quantile of the per-token top probability used as a sequence signal.
DEFAULT_SIGNAL_QUANTILE = 0.1


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    exp = np.exp(shifted)
    return exp / exp.sum()


class TokenChooser:
    """Chooses each next token for one request: argmax when greedy, otherwise a draw from the
    temperature-scaled, top-p-truncated distribution with the request's own seeded generator."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.rng = np.random.default_rng(request.seed)

    def choose(self, logits: np.ndarray) -> tuple[int, float]:
        """(token id, the top probability of the untempered distribution) for a [vocab] row."""
        probs = softmax(logits)
        top_prob = float(probs.max())
        if self.request.greedy:
            return int(np.argmax(logits)), top_prob
        scaled = softmax(logits / self.request.temperature)
        if self.request.top_p < 1.0:
            order = np.argsort(-scaled, kind="stable")
            cumulative = np.cumsum(scaled[order])
            keep = order[: int(np.searchsorted(cumulative, self.request.top_p)) + 1]
            kept = np.zeros_like(scaled)
            kept[keep] = scaled[keep]
            scaled = kept / kept.sum()
        return int(self.rng.choice(len(scaled), p=scaled)), top_prob


class SignalTracker:
    """The running confidence signals of one sequence (see `SequenceSignals`)."""

    def __init__(self, quantile: float = DEFAULT_SIGNAL_QUANTILE) -> None:
        self.quantile = quantile
        self.top_probs: list[float] = []

    def add(self, top_prob: float) -> None:
        self.top_probs.append(top_prob)

    def signals(self) -> SequenceSignals:
        if not self.top_probs:
            return SequenceSignals()
        values = np.asarray(self.top_probs)
        return SequenceSignals(min_top_prob=float(values.min()),
                               quantile_top_prob=float(np.quantile(values, self.quantile)),
                               tokens=len(self.top_probs))


class TextAssembler:
    """Token ids in, text deltas out. Holds back an incomplete UTF-8 character and any tail that
    could still become a stop sequence; cuts the text before the first stop sequence."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stop = tuple(stop)
        self.token_ids: list[int] = []
        self.text = ""          # everything emitted so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; the text that is now safe to show (possibly empty)."""
        self.token_ids.append(token_id)
        decoded = self.decode(self.token_ids)
        cut = self._first_stop(decoded)
        if cut is not None:
            self.stopped = True
            return self._emit(decoded[:cut])
        if decoded.endswith("\ufffd"):
            return ""  # a multi-byte character is not complete yet
        return self._emit(decoded[: len(decoded) - self._holdback(decoded)])

    def finish(self) -> str:
        """The held-back rest, once generation has ended without a stop sequence."""
        if self.stopped:
            return ""
        return self._emit(self.decode(self.token_ids))

    def _emit(self, upto: str) -> str:
        if len(upto) <= len(self.text) or not upto.startswith(self.text):
            return ""
        delta, self.text = upto[len(self.text):], upto
        return delta

    def _first_stop(self, decoded: str) -> Optional[int]:
        hits = [decoded.find(stop, max(0, len(self.text) - len(stop))) for stop in self.stop]
        hits = [hit for hit in hits if hit >= 0]
        return min(hits) if hits else None

    def _holdback(self, decoded: str) -> int:
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(decoded)), longest, -1):
                if decoded.endswith(stop[:size]):
                    longest = size
                    break
        return longest
