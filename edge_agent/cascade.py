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
from typing import Optional, Sequence

import numpy as np

from edge_agent.cloud_link import CloudLink, CloudUnavailable
from shared.errors import ModelNotFoundError
from shared.model import Model, ModelInput
from shared.policy import DeferralPolicy
from shared.prediction import Prediction
from shared.signals import Signals, signals_of
from shared.tensor_codec import from_proto

#: Rows the edge model computes per call in `Cascade.infer_rows`; the event loop serves other
#: callers between chunks.
EDGE_CHUNK_ROWS = 256
#: Deferred rows of one batch waiting on the cloud at once (`Cascade.infer_rows`).
MAX_CLOUD_ROWS_IN_FLIGHT = 128
#: Time to turn one row's result into the response, reserved before a batch's deadline on top
#: of the fallback reserve. For 4,096 rows on a 2-core VM, the rows' fallbacks, outputs and
#: parameters took 6-10 us a row when quiet and 35 us under a load average of 10.
FINISH_S_PER_ROW = 50e-6


def classifier_cascade(cascade: Optional["Cascade"]) -> "Cascade":
    """`cascade`, or NOT_FOUND on an agent without a classifier bundle (language model only)."""
    if cascade is None:
        raise ModelNotFoundError("this agent serves no classifier (set bundle_dir)")
    return cascade


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


@dataclass(frozen=True)
class _Deferred:
    """An input the edge defers: its own answer, kept for a fallback."""

    active: "ActiveModel"
    prediction: Prediction
    signals: Signals
    edge_ms: float
    defer_reason: str


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
        decided = self._decide(active, payload, probs, (time.perf_counter() - started) * 1000.0)
        if isinstance(decided, CascadeResult):
            return decided
        timeout_s = deadline_s - time.monotonic() - self.fallback_reserve_s
        return await self._ask_cloud(payload, decided, timeout_s=timeout_s, request_id=request_id, priority=priority)

    async def infer_rows(self, payloads: Sequence[ModelInput], *, deadline_s: float, request_ids: Sequence[str],
                         priority: int = 0, max_cloud_in_flight: int = MAX_CLOUD_ROWS_IN_FLIGHT) -> list[CascadeResult]:
        """Many inputs sharing one deadline (a KServe batch), answered like `infer` answers one,
        without holding up other callers:
        - the edge model runs on chunks of EDGE_CHUNK_ROWS rows, yielding to the event loop
          between chunks;
        - the deferred rows go to the cloud in order, at most `max_cloud_in_flight` at a time,
          so one big request never fills the cloud's queue ahead of other callers;
        - when the deadline comes, less the fallback reserve and the time to encode the
          response (FINISH_S_PER_ROW a row), the rows still without a cloud answer are
          answered by the edge (`edge_fallback` / `deadline`), all at once. Their calls are
          cancelled, not timed out: the breaker is not charged for the batch's size.
        """
        active = self.active  # pinned for the whole batch
        model = active.model
        results: list[Optional[CascadeResult]] = [None] * len(payloads)
        deferred: list[tuple[int, ModelInput, _Deferred]] = []
        for first in range(0, len(payloads), EDGE_CHUNK_ROWS):
            if first:
                await asyncio.sleep(0)
            chunk = [model.check_input(p) for p in payloads[first:first + EDGE_CHUNK_ROWS]]
            started = time.perf_counter()
            try:
                probs = model.predict(chunk)
            except Exception:
                active.errors += len(chunk)
                raise
            active.requests += len(chunk)
            edge_ms = (time.perf_counter() - started) * 1000.0 / len(chunk)
            for offset, (payload, row_probs) in enumerate(zip(chunk, probs)):
                decided = self._decide(active, payload, row_probs, edge_ms)
                if isinstance(decided, CascadeResult):
                    results[first + offset] = decided
                else:
                    deferred.append((first + offset, payload, decided))
        if deferred:
            await self._ask_cloud_rows(deferred, results, deadline_s=deadline_s, request_ids=request_ids,
                                       priority=priority, max_in_flight=max_cloud_in_flight)
        return results  # type: ignore[return-value] - every row has its result now

    def _decide(self, active: ActiveModel, payload: ModelInput, probs: np.ndarray, edge_ms: float) -> "CascadeResult | _Deferred":
        """The edge's answer, or what a deferral to the cloud needs."""
        model = active.model
        signals = signals_of(probs)
        pressure = self.pressure
        length = model.input_length(payload)
        decision = active.policy.decide(signals, length, pressure)
        calibrated = active.policy.decide(signals, length, 0.0) if pressure > 0 else decision
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
        return _Deferred(active, edge_prediction, signals, edge_ms, decision.reason)

    async def _ask_cloud(self, payload: ModelInput, deferred: "_Deferred", *, timeout_s: float, request_id: str,
                         priority: int) -> CascadeResult:
        """The cloud's answer within `timeout_s`, or the edge's own flagged with the reason."""
        if self.cloud is None:
            return self._fallback(deferred, 0.0, "no_cloud")
        cloud_started = time.perf_counter()
        try:
            response = await self.cloud.infer(payload, timeout_s=timeout_s, request_id=request_id, priority=priority)
        except CloudUnavailable as exc:
            return self._fallback(deferred, (time.perf_counter() - cloud_started) * 1000.0, exc.reason)
        cloud_ms = (time.perf_counter() - cloud_started) * 1000.0
        cloud_prediction = Prediction(
            label=response.label,
            label_name=response.label_name,
            probabilities=np.asarray(from_proto(response.probabilities), dtype=np.float32),
            model_name=response.model_name,
            model_version=int(response.model_version or 0),
        )
        abstain_reason = _cloud_abstain_reason(cloud_prediction, deferred.active)
        if abstain_reason:
            return self._count(CascadeResult(_abstained(cloud_prediction, deferred.active), "abstain", deferred.signals,
                                             deferred.edge_ms, cloud_ms, deferred.defer_reason,
                                             abstain_reason=abstain_reason))
        return self._count(CascadeResult(cloud_prediction, "cloud", deferred.signals, deferred.edge_ms, cloud_ms,
                                         defer_reason=deferred.defer_reason))

    async def _ask_cloud_rows(self, rows: list[tuple[int, ModelInput, "_Deferred"]], results: list, *,
                              deadline_s: float, request_ids: Sequence[str], priority: int, max_in_flight: int) -> None:
        cutoff_s = deadline_s - self.fallback_reserve_s - len(results) * FINISH_S_PER_ROW
        queue = iter(rows)

        async def lane() -> None:
            for index, payload, deferred in queue:
                # the call's own limit is the request's deadline: the cutoff below cancels it first
                timeout_s = deadline_s - time.monotonic()
                if time.monotonic() >= cutoff_s:
                    return
                results[index] = await self._ask_cloud(payload, deferred, timeout_s=timeout_s,
                                                       request_id=request_ids[index], priority=priority)
                await asyncio.sleep(0)  # a lane whose rows fail fast (breaker open) still lets others in

        lanes = [asyncio.ensure_future(lane()) for _ in range(min(max_in_flight, len(rows)))]
        try:
            await asyncio.wait(lanes, timeout=max(0.0, cutoff_s - time.monotonic()))
        finally:
            for task in lanes:   # their calls end (abandoned) after this request is answered
                task.cancel()
        for index, _payload, deferred in rows:
            if results[index] is None:
                results[index] = self._fallback(deferred, 0.0, "deadline")

    def _fallback(self, deferred: "_Deferred", cloud_ms: float, reason: str) -> CascadeResult:
        return self._count(CascadeResult(deferred.prediction, "edge_fallback", deferred.signals, deferred.edge_ms,
                                         cloud_ms, deferred.defer_reason, reason))

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
