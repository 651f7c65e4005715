"""What a text-generation request asks for, and what it ends with. Both sides use these types;
nothing here imports torch or onnxruntime.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from shared.errors import InvalidInputError

#: The most new tokens one request may ask for (a daemon may lower it).
MAX_NEW_TOKENS_LIMIT = 4096
#: The most stop sequences one request may carry, and the longest one.
MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 256

#: Why a generation ended.
FINISH_EOS = "eos"              # the model produced an end-of-sequence token
FINISH_LENGTH = "length"        # max_new_tokens reached (or the context is full)
FINISH_STOP = "stop"            # a stop sequence appeared; the text ends before it
FINISH_DEADLINE = "deadline"    # the deadline passed; the text is what was produced by then
FINISH_CANCELLED = "cancelled"  # the caller went away
FINISH_DEFERRED = "deferred"    # the edge stopped early and handed the request to the cloud


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One prompt to continue. `temperature == 0` means greedy decoding."""

    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def decode_prompt(raw: bytes) -> str:
    """The prompt text of a request's UTF-8 bytes; InvalidInputError names the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"prompt is not valid UTF-8: byte {exc.start} ({raw[exc.start]:#04x}) "
                                f"cannot start or continue a character") from None


def validated(request: GenerationRequest, *, max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT) -> GenerationRequest:
    """`request` if every field is in range; InvalidInputError naming the first bad field otherwise."""
    if not request.prompt:
        raise InvalidInputError("prompt is empty")
    if not 1 <= request.max_new_tokens <= max_new_tokens_limit:
        raise InvalidInputError(f"max_new_tokens must be between 1 and {max_new_tokens_limit}, "
                                f"got {request.max_new_tokens}")
    if not (math.isfinite(request.temperature) and 0.0 <= request.temperature <= 100.0):
        raise InvalidInputError(f"temperature must be between 0 (greedy) and 100, got {request.temperature}")
    if not (math.isfinite(request.top_p) and 0.0 < request.top_p <= 1.0):
        raise InvalidInputError(f"top_p must be in (0, 1], got {request.top_p}")
    if len(request.stop) > MAX_STOP_SEQUENCES:
        raise InvalidInputError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(request.stop)}")
    for stop in request.stop:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidInputError(f"a stop sequence must have 1 to {MAX_STOP_CHARS} characters, got {len(stop)}")
    return request


def check_prompt_fits(prompt_tokens: int, max_new_tokens: int, context_tokens: int) -> None:
    """InvalidInputError unless the prompt leaves room for at least one new token in the context."""
    if prompt_tokens >= context_tokens:
        raise InvalidInputError(f"prompt is {prompt_tokens} tokens; the model's context holds {context_tokens} "
                                f"and at least one must be left for the answer")


@dataclasses.dataclass
class SequenceSignals:
    """Confidence of one generated sequence from its per-token top probabilities.

    The minimum and a low quantile are not biased by length the way sums and means are.
    """

    min_top_prob: float = 1.0
    quantile_top_prob: float = 1.0
    tokens: int = 0


@dataclasses.dataclass
class GenerationResult:
    """How one generation ended. `text` excludes the prompt and any stop sequence."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    signals: SequenceSignals = dataclasses.field(default_factory=SequenceSignals)
    top_probs: list[float] = dataclasses.field(default_factory=list)   # per chosen token, end token included
