"""GenerateRequest / GenerateChunk <-> the internal generation types. Both daemons' Generate
servicers and the edge's cloud call use these; nothing else converts."""

from __future__ import annotations

import math
from typing import Optional

from protos import edgecascade_pb2 as pb
from shared.errors import InvalidInputError
from shared.llm_request import GenerationRequest, SequenceSignals, decode_prompt, validated

#: The share of a generation's time budget kept back so the last chunk (with its summary)
#: reaches the caller before the caller's gRPC deadline does.
SUMMARY_RESERVE_SHARE = 0.05
SUMMARY_RESERVE_MAX_S = 0.25

ROUTES = {"edge": pb.EDGE, "cloud": pb.CLOUD, "edge_fallback": pb.EDGE_FALLBACK}


def generation_request_of(message: pb.GenerateRequest, *, default_max_new_tokens: int,
                          max_new_tokens_limit: int) -> GenerationRequest:
    """The validated internal request; InvalidInputError naming the first bad field."""
    if not math.isfinite(message.temperature) or not math.isfinite(message.top_p):
        raise InvalidInputError("temperature and top_p must be finite numbers")
    if message.max_new_tokens < 0:
        raise InvalidInputError(f"max_new_tokens must be between 1 and {max_new_tokens_limit}, "
                                f"got {message.max_new_tokens}")
    request = GenerationRequest(
        prompt=decode_prompt(message.prompt),
        max_new_tokens=message.max_new_tokens or default_max_new_tokens,
        temperature=float(message.temperature),
        top_p=float(message.top_p) if message.top_p else 1.0,
        seed=int(message.seed) if message.HasField("seed") else None,
        stop=tuple(message.stop),
    )
    return validated(request, max_new_tokens_limit=max_new_tokens_limit)


def generate_message_of(request: GenerationRequest, *, model: str, request_id: str, timeout_s: float) -> pb.GenerateRequest:
    message = pb.GenerateRequest(model=model, request_id=request_id, prompt=request.prompt.encode("utf-8"),
                                 max_new_tokens=request.max_new_tokens, temperature=request.temperature,
                                 top_p=request.top_p, stop=list(request.stop), timeout_ms=timeout_s * 1000.0)
    if request.seed is not None:
        message.seed = request.seed
    return message


def generation_budget_s(remaining_s: float) -> float:
    """How long to generate for when `remaining_s` are left: the rest is kept for the summary."""
    return remaining_s - min(SUMMARY_RESERVE_MAX_S, remaining_s * SUMMARY_RESERVE_SHARE)


def signals_message(signals: Optional[SequenceSignals]) -> Optional[pb.GenerationSignals]:
    if signals is None:
        return None
    return pb.GenerationSignals(min_top_prob=signals.min_top_prob, quantile_top_prob=signals.quantile_top_prob,
                                tokens=signals.tokens)


def status_of(finish_reason: str, tokens: int) -> str:
    """One line for the summary: "ok", or what cut the answer short."""
    if finish_reason == "deadline":
        return f"deadline passed after {tokens} generated tokens; the text is what was produced by then"
    if finish_reason == "cancelled":
        return f"cancelled by the caller after {tokens} generated tokens"
    return "ok"
