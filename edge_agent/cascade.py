"""The cascade on the board, independent of transport: edge model, policy, cloud, fallback.

The caller always gets an answer before its deadline: from the edge when confident, from the
cloud when deferred and the cloud answers in time, otherwise from the edge again, flagged
`edge_fallback` with the reason.

Cloud pressure (from heartbeats) lowers the threshold within the policy's bounds. An answer
the edge gives only because of that shift, or because the cloud is saturated
(`shed_at_pressure`), is flagged `edge_fallback` / `pressure`; one refused by the cloud budget,
`edge_fallback` / `cloud_budget`. So `edge` always means "confident at the calibrated threshold".

Out of scope (`abstain`): an edge score below the policy's `abstain_threshold` is answered as
out of scope at once, without the cloud (`edge_low_confidence`); so is an accepted edge answer
that is the bundle's out-of-scope label (`edge_out_of_scope_label`). A deferred request whose
cloud answer scores below `cloud_abstain_threshold`, or is that label, is out of scope too
(`cloud_low_confidence`, `cloud_out_of_scope_label`). An abstention answers the out-of-scope
label (`ModelCard.abstain_label`) with the probabilities of the model that decided.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from edge_agent.cloud_link import CloudLink, CloudUnavailable
from shared.model import Model, ModelInput
from shared.policy import DeferralPolicy
from shared.prediction import Prediction
from shared.signals import Signals, signals_of
from shared.tensor_codec import from_proto


@dataclass
class CascadeResult:
    prediction: Prediction
    route: str                 # edge, cloud, edge_fallback, abstain
    signals: Signals
    edge_ms: float
    cloud_ms: float = 0.0
    defer_reason: str = ""
    fallback_reason: str = ""
    abstain_reason: str = ""   # set for route abstain: who decided and why (see the module docstring)


@dataclass
class ActiveModel:
    """The model and policy serving now. Swapped as one reference, so a request that started
    on one version finishes on it."""

    model: Model
    policy: DeferralPolicy
    requests: int = 0
    """Requests this model has computed (the updater's health window reads these two)."""
    errors: int = 0
    """Requests on which this model raised."""
    abstain_label: tuple[int, str] = field(init=False)
    """(index or -1, name) an abstention answers, from the model card."""

    def __post_init__(self) -> None:
        self.abstain_label = self.model.card.abstain_label


class Cascade:
    def __init__(self, active: ActiveModel, cloud: Optional[CloudLink], *, fallback_reserve_ms: float = 15.0,
                 shed_at_pressure: Optional[float] = None) -> None:
        self.active = active
        self.cloud = cloud
        self.fallback_reserve_s = fallback_reserve_ms / 1000.0
        self.shed_at_pressure = shed_at_pressure
        self.pressure = 0.0                      # last cloud pressure seen (0..1), set by the heartbeat
        self.route_counts: Counter[str] = Counter()
        self.fallback_counts: Counter[str] = Counter()   # edge_fallback answers by reason
        self.abstain_counts: Counter[str] = Counter()    # abstain answers by reason

    def current_threshold(self) -> float:
        return self.active.policy.threshold_at(self.pressure)

    async def infer(self, payload: ModelInput, *, deadline_s: float, request_id: str, priority: int = 0) -> CascadeResult:
        active = self.active  # pinned for this request
        model = active.model
        payload = model.check_input(payload)
        started = time.perf_counter()
        try:
            probs = model.predict([payload])[0]
        except Exception:
            active.errors += 1
            raise
        active.requests += 1
        signals = signals_of(probs)
        pressure = self.pressure
        length = model.input_length(payload)
        decision = active.policy.decide(signals, length, pressure)
        calibrated = active.policy.decide(signals, length, 0.0) if pressure > 0 else decision
        edge_ms = (time.perf_counter() - started) * 1000.0
        edge_prediction = Prediction.from_probs(probs, model.labels, model.name, model.version)
        if calibrated.abstain:
            return self._count(CascadeResult(_abstained(edge_prediction, active), "abstain", signals, edge_ms,
                                             abstain_reason="edge_low_confidence"))
        if calibrated.accept:
            if edge_prediction.label == active.abstain_label[0]:
                return self._count(CascadeResult(edge_prediction, "abstain", signals, edge_ms,
                                                 abstain_reason="edge_out_of_scope_label"))
            return self._count(CascadeResult(edge_prediction, "edge", signals, edge_ms))
        if decision.accept or (self.cloud is not None and self.shed_at_pressure is not None
                               and pressure >= self.shed_at_pressure):
            return self._count(
                CascadeResult(edge_prediction, "edge_fallback", signals, edge_ms, 0.0, calibrated.reason, "pressure")
            )

        fallback_reason = "no_cloud"
        cloud_ms = 0.0
        if self.cloud is not None:
            timeout_s = deadline_s - time.monotonic() - self.fallback_reserve_s
            cloud_started = time.perf_counter()
            try:
                response = await self.cloud.infer(payload, timeout_s=timeout_s, request_id=request_id, priority=priority)
                cloud_ms = (time.perf_counter() - cloud_started) * 1000.0
                cloud_prediction = Prediction(
                    label=response.label,
                    label_name=response.label_name,
                    probabilities=np.asarray(from_proto(response.probabilities), dtype=np.float32),
                    model_name=response.model_name,
                    model_version=int(response.model_version or 0),
                )
                abstain_reason = _cloud_abstain_reason(cloud_prediction, active)
                if abstain_reason:
                    return self._count(CascadeResult(_abstained(cloud_prediction, active), "abstain", signals, edge_ms,
                                                     cloud_ms, decision.reason, abstain_reason=abstain_reason))
                return self._count(
                    CascadeResult(cloud_prediction, "cloud", signals, edge_ms, cloud_ms, defer_reason=decision.reason)
                )
            except CloudUnavailable as exc:
                fallback_reason = exc.reason
                cloud_ms = (time.perf_counter() - cloud_started) * 1000.0
            except asyncio.CancelledError:
                raise
        return self._count(
            CascadeResult(edge_prediction, "edge_fallback", signals, edge_ms, cloud_ms, decision.reason, fallback_reason)
        )

    def _count(self, result: CascadeResult) -> CascadeResult:
        self.route_counts[result.route] += 1
        if result.fallback_reason:
            self.fallback_counts[result.fallback_reason] += 1
        if result.abstain_reason:
            self.abstain_counts[result.abstain_reason] += 1
        return result


def _cloud_abstain_reason(cloud: Prediction, active: ActiveModel) -> str:
    """Why the cloud's answer is out of scope, or "" when it is not."""
    if active.model.card.out_of_scope_label is not None and cloud.label_name == active.abstain_label[1]:
        return "cloud_out_of_scope_label"
    if active.policy.spec.cloud_abstain_threshold is not None and active.policy.cloud_abstains(signals_of(cloud.probabilities)):
        return "cloud_low_confidence"
    return ""


def _abstained(prediction: Prediction, active: ActiveModel) -> Prediction:
    """`prediction` answered as the out-of-scope label (its probabilities and model kept)."""
    index, name = active.abstain_label
    return replace(prediction, label=index, label_name=name)
