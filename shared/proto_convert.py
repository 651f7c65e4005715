"""Internal values <-> edgecascade.v1 messages: `infer_request` for every client (SDK, cloud
link, Redis work entries, benchmarks), `response_of` for both servicers."""

from __future__ import annotations

from typing import Any

from protos import edgecascade_pb2 as pb
from shared.model import ModelInput
from shared.prediction import Prediction
from shared.signals import Signals
from shared.tensor_codec import to_proto

ROUTE_TO_PROTO = {"edge": pb.EDGE, "cloud": pb.CLOUD, "edge_fallback": pb.EDGE_FALLBACK, "abstain": pb.ABSTAIN}
ROUTE_FROM_PROTO = {v: k for k, v in ROUTE_TO_PROTO.items()}


def infer_request(payload: ModelInput, **fields: Any) -> pb.InferRequest:
    """An `InferRequest` carrying `payload` (text, or a tensor) and the other `fields` as given."""
    if isinstance(payload, str):
        return pb.InferRequest(text=payload, **fields)
    return pb.InferRequest(tensor=to_proto(payload), **fields)


def response_of(
    prediction: Prediction,
    *,
    request_id: str,
    route: str,
    signals: Signals | None = None,
    edge_ms: float = 0.0,
    cloud_ms: float = 0.0,
    defer_reason: str = "",
    fallback_reason: str = "",
    abstain_reason: str = "",
) -> pb.InferResponse:
    return pb.InferResponse(
        request_id=request_id,
        served_by=ROUTE_TO_PROTO[route],
        label=prediction.label,
        label_name=prediction.label_name,
        probabilities=to_proto(prediction.probabilities),
        model_name=prediction.model_name,
        model_version=str(prediction.model_version),
        edge_ms=edge_ms,
        cloud_ms=cloud_ms,
        defer_reason=defer_reason,
        fallback_reason=fallback_reason,
        abstain_reason=abstain_reason,
        signals=None if signals is None else pb.Signals(max_prob=signals.max_prob, margin=signals.margin,
                                                        entropy=signals.entropy),
    )
