"""KServe v2 on the cloud router: each batch row is one router request, so the rows of one
KServe request join the dynamic batcher together (with everything else in flight).

Outputs are `probs`, `label` and `label_name` (see `shared.kserve_models`); the response
parameters are `served_by` ("cloud") and `model_version`.
"""

from __future__ import annotations

import functools

from cloud_router.metrics import RouterMetrics
from cloud_router.router import Router
from cloud_router.settings import RouterSettings
from shared import kserve_models as km
from shared.errors import UnavailableError
from shared.kserve_backend import InferenceRequest, InferenceResult, ModelMetadata, ServerMetadata
from shared.metrics import API_KSERVE
from shared.model import Model, ModelInput
from shared.prediction import Prediction

SERVER_NAME = "edgecascade-cloud-router"


class RouterKServeBackend:
    """`KServeBackend` over the router. (While the daemon drains, gRPC itself refuses new
    calls, and health says NOT_SERVING.)"""

    def __init__(self, router: Router, settings: RouterSettings, metrics: RouterMetrics | None = None) -> None:
        self.router = router
        self.settings = settings
        self.metrics = metrics or RouterMetrics(settings.router_id)

    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self.router.ready

    def model_ready(self, name: str, version: str) -> bool:
        model = self.router.models.get(name)
        return model is not None and self.server_ready() and model.ready and version in ("", str(model.version))

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=km.server_version())

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        return km.model_metadata(self._model(name, version))

    def _model(self, name: str, version: str) -> Model:
        model = self.router.resolve(name)  # ModelNotFoundError names the hosted models
        km.check_version(model, version)
        return model

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        with self.metrics.refusals(API_KSERVE):
            model = self._model(request.model_name, request.model_version)
            if not self.server_ready():
                raise UnavailableError("the cloud router is not ready (models still loading)")
            batch = km.row_batch(request, model, default_timeout_ms=self.settings.default_timeout_ms,
                                 max_timeout_ms=self.settings.max_timeout_ms)
        predictions = await km.run_rows(batch, functools.partial(self._row, model.name))
        return InferenceResult(
            outputs=km.prediction_outputs(predictions),
            model_version=str(model.version),
            parameters={"served_by": "cloud", "model_version": str(model.version)},
        )

    async def _row(self, model_name: str, payload: ModelInput, deadline_s: float, request_id: str,
                   priority: int) -> Prediction:
        with self.metrics.track(API_KSERVE) as outcome:
            prediction, _cloud_ms = await self.router.infer(model_name, payload, deadline_s, priority, request_id)
            outcome.route = "cloud"
            return prediction
