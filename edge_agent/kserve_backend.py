"""KServe v2 on the edge agent: every batch row goes through the cascade, like an SDK request.
A batch of many rows goes through `Cascade.infer_rows`: the edge model on chunks of rows, and
a bounded number of deferred rows at the cloud at once, so a big batch never holds up others.

Besides `probs`, `label` and `label_name` (see `shared.kserve_models`), each row reports the
route that served it (`served_by`: edge, cloud, edge_fallback, abstain) and the edge model's
confidence (`max_prob`, `margin`, `entropy`). The response parameters say the same for the
request: `served_by`, `model_name`, `model_version` (of the model that produced the label),
`defer_reason`, `fallback_reason` and `abstain_reason` are the rows' values joined by commas (one value for a
one-row request); `max_prob`, `margin` and `entropy` are those of the least confident row.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from edge_agent.cascade import Cascade, CascadeResult, classifier_cascade
from edge_agent.metrics import AgentMetrics
from edge_agent.settings import EdgeSettings
from shared import kserve_models as km
from shared.errors import ModelNotFoundError, UnavailableError, echoed
from shared.kserve_backend import InferenceRequest, InferenceResult, ModelMetadata, ServerMetadata, TensorSpec
from shared.metrics import API_KSERVE, RequestOutcome
from shared.model import Model

SERVER_NAME = "edgecascade-edge-agent"
SERVED_BY, MAX_PROB, MARGIN, ENTROPY = "served_by", "max_prob", "margin", "entropy"
ROUTE_OUTPUTS = (
    TensorSpec(SERVED_BY, "BYTES", (-1,)),
    TensorSpec(MAX_PROB, "FP32", (-1,)),
    TensorSpec(MARGIN, "FP32", (-1,)),
    TensorSpec(ENTROPY, "FP32", (-1,)),
)


class EdgeKServeBackend:
    """`KServeBackend` over the agent's cascade. (While the daemon drains, gRPC itself refuses
    new calls, and health says NOT_SERVING.) Without a classifier (`cascade` None) the server is
    live and ready, and every model is NOT_FOUND."""

    def __init__(self, cascade: Optional[Cascade], settings: EdgeSettings, metrics: AgentMetrics | None = None) -> None:
        self.cascade = cascade
        self.settings = settings
        self.metrics = metrics or AgentMetrics(cascade, settings.agent_id)

    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self.cascade is None or self.cascade.active.model.ready

    def model_ready(self, name: str, version: str) -> bool:
        if self.cascade is None:
            return False
        model = self.cascade.active.model
        return self.server_ready() and name == model.name and version in ("", str(model.version))

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=km.server_version())

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        return km.model_metadata(self._model(name, version), ROUTE_OUTPUTS)

    def _model(self, name: str, version: str) -> Model:
        model = classifier_cascade(self.cascade).active.model
        if name != model.name:
            raise ModelNotFoundError(f"unknown model {echoed(name)}; this agent serves {model.name!r}")
        km.check_version(model, version)
        return model

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        with self.metrics.refusals(API_KSERVE):
            model = self._model(request.model_name, request.model_version)
            if not self.server_ready():
                raise UnavailableError("the edge agent is not ready (models still loading)")
            batch = km.row_batch(request, model, default_timeout_ms=self.settings.default_timeout_ms,
                                 max_timeout_ms=self.settings.max_timeout_ms)
        cascade = classifier_cascade(self.cascade)
        with self.metrics.refusals(API_KSERVE):   # a batch that fails (the model raised) counts once
            if len(batch.rows) == 1:
                results = [await cascade.infer(batch.rows[0], deadline_s=batch.deadline_s,
                                               request_id=batch.request_ids[0], priority=batch.priority)]
            else:
                results = await cascade.infer_rows(batch.rows, deadline_s=batch.deadline_s,
                                                   request_ids=batch.request_ids, priority=batch.priority)
        for result in results:
            outcome = RequestOutcome(result.route, "OK", result.defer_reason, result.fallback_reason, result.abstain_reason)
            self.metrics.record(API_KSERVE, outcome, (result.edge_ms + result.cloud_ms) / 1000.0)
        return InferenceResult(outputs=_outputs(results), model_version=str(model.version), parameters=_parameters(results))


def _outputs(results: list[CascadeResult]) -> dict[str, np.ndarray]:
    outputs = km.prediction_outputs([r.prediction for r in results])
    outputs[SERVED_BY] = np.array([r.route for r in results], dtype=object)
    outputs[MAX_PROB] = np.array([r.signals.max_prob for r in results], dtype=np.float32)
    outputs[MARGIN] = np.array([r.signals.margin for r in results], dtype=np.float32)
    outputs[ENTROPY] = np.array([r.signals.entropy for r in results], dtype=np.float32)
    return outputs


def _parameters(results: list[CascadeResult]) -> km.ParameterMap:
    least = min(results, key=lambda r: r.signals.max_prob).signals
    return {
        SERVED_BY: km.joined([r.route for r in results]),
        "model_name": km.joined([r.prediction.model_name for r in results]),
        "model_version": km.joined([str(r.prediction.model_version) for r in results]),
        "defer_reason": km.joined([r.defer_reason for r in results]),
        "fallback_reason": km.joined([r.fallback_reason for r in results]),
        "abstain_reason": km.joined([r.abstain_reason for r in results]),
        MAX_PROB: least.max_prob,
        MARGIN: least.margin,
        ENTROPY: least.entropy,
    }
