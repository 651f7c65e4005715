"""What cascade papers report, from per-example scores and predictions of both models.

Accuracy is measured against `gold` labels when given, else against the cloud's answers
(agreement, so the cloud scores 1.0). Deferring means the cloud's answer is used.

- edge-only, cloud-only and oracle accuracy (oracle: right when either model is right);
- the deferral-accuracy curve: defer the least confident examples first;
- APGR (as in RouteLLM): the area under the curve of the performance gap recovered,
  (AUC - edge_acc) / (cloud_acc - edge_acc) over deferral rates in [0, 1];
- CPT(p): the smallest cloud share that recovers p % of the gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from edgecascade.offline.calibration import check_arrays
from shared.errors import CalibrationError, InvalidInputError

CPT_PERCENTS: tuple[int, ...] = (50, 80, 95)


@dataclass(frozen=True)
class CascadeOutcome:
    """The cascade at one threshold."""

    threshold: float
    accuracy: float
    deferral_rate: float


@dataclass(frozen=True)
class CascadeReport:
    edge_accuracy: float
    cloud_accuracy: float
    oracle_accuracy: float
    apgr: Optional[float]
    """None when edge and cloud accuracy are equal: there is no gap to recover."""
    cpt: dict[int, float]
    """Percent of the gap -> smallest deferral rate that recovers it (empty when there is no gap)."""
    curve: np.ndarray = field(repr=False)
    """[N+1, 2] rows of (deferral_rate, accuracy)."""
    reference: str
    """"gold" or "cloud" (agreement)."""

    def summary(self) -> dict[str, Any]:
        """The scalar fields, JSON-ready (curve left out)."""
        return {
            "reference": self.reference,
            "edge_accuracy": self.edge_accuracy,
            "cloud_accuracy": self.cloud_accuracy,
            "oracle_accuracy": self.oracle_accuracy,
            "apgr": self.apgr,
            "cpt": {f"cpt{p}": rate for p, rate in self.cpt.items()},
        }


def _correct(edge_pred: np.ndarray, cloud_pred: np.ndarray, gold: Optional[np.ndarray]):
    reference = cloud_pred if gold is None else gold
    return edge_pred == reference, cloud_pred == reference


def endpoint_accuracies(edge_pred: Any, cloud_pred: Any, gold: Any = None) -> tuple[float, float, float]:
    """(edge-only, cloud-only, oracle) accuracy."""
    edge_pred = np.asarray(edge_pred)
    _, edge_pred, cloud_pred, gold = check_arrays(np.zeros(edge_pred.shape), edge_pred, cloud_pred, gold)
    edge_ok, cloud_ok = _correct(edge_pred, cloud_pred, gold)
    return float(edge_ok.mean()), float(cloud_ok.mean()), float((edge_ok | cloud_ok).mean())


def deferral_accuracy_curve(scores: Any, edge_pred: Any, cloud_pred: Any, gold: Any = None) -> np.ndarray:
    """[N+1, 2] rows (k/N, accuracy when the k least confident examples go to the cloud).

    Within a run of tied scores the order is unknown, so accuracy is interpolated linearly
    between the ends of the run (the mean over tie orders); the ends are exact.
    """
    scores, edge_pred, cloud_pred, gold = check_arrays(scores, edge_pred, cloud_pred, gold)
    n = scores.size
    edge_ok, cloud_ok = _correct(edge_pred, cloud_pred, gold)
    order = np.argsort(scores, kind="stable")  # least confident first
    gain = (cloud_ok.astype(np.int64) - edge_ok.astype(np.int64))[order]
    cum = np.concatenate(([0], np.cumsum(gain)))
    s = scores[order]
    boundaries = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1, [n]))
    k = np.arange(n + 1)
    accuracy = (edge_ok.sum() + np.interp(k, boundaries, cum[boundaries])) / n
    return np.column_stack([k / n, accuracy])


def _gap(edge_accuracy: float, cloud_accuracy: float) -> float:
    gap = cloud_accuracy - edge_accuracy
    if abs(gap) < 1e-12:
        raise CalibrationError(
            f"edge and cloud accuracy are equal ({edge_accuracy:.4f}): there is no gap to recover, "
            f"so APGR and CPT are undefined"
        )
    return gap


def apgr(curve: np.ndarray, edge_accuracy: float, cloud_accuracy: float) -> float:
    """Average performance gap recovered: (AUC - edge_acc) / (cloud_acc - edge_acc)."""
    curve = _check_curve(curve)
    gap = _gap(edge_accuracy, cloud_accuracy)
    rate, acc = curve[:, 0], curve[:, 1]
    auc = float(np.sum(np.diff(rate) * (acc[1:] + acc[:-1]) / 2))
    return (auc - edge_accuracy) / gap


def cpt(curve: np.ndarray, edge_accuracy: float, cloud_accuracy: float, percent: float) -> float:
    """Smallest deferral rate on the curve whose accuracy recovers `percent` % of the gap.

    Returns nan when the curve never gets there (possible only if the cloud is worse than the edge).
    """
    curve = _check_curve(curve)
    if not (0 < percent <= 100):
        raise InvalidInputError(f"CPT percent must be in (0, 100], got {percent!r}")
    gap = _gap(edge_accuracy, cloud_accuracy)
    target = edge_accuracy + percent / 100.0 * gap
    reached = np.flatnonzero(curve[:, 1] >= target - 1e-12) if gap > 0 else np.flatnonzero(curve[:, 1] <= target + 1e-12)
    return float(curve[reached[0], 0]) if reached.size else float("nan")


def cascade_at_threshold(
    scores: Any, edge_pred: Any, cloud_pred: Any, threshold: float, gold: Any = None
) -> CascadeOutcome:
    """Accuracy and deferral rate when the edge accepts score >= threshold."""
    scores, edge_pred, cloud_pred, gold = check_arrays(scores, edge_pred, cloud_pred, gold)
    threshold = float(threshold)
    if np.isnan(threshold):
        raise InvalidInputError("threshold is NaN")
    edge_ok, cloud_ok = _correct(edge_pred, cloud_pred, gold)
    accept = scores >= threshold
    return CascadeOutcome(
        threshold=threshold,
        accuracy=float(np.where(accept, edge_ok, cloud_ok).mean()),
        deferral_rate=float(1.0 - accept.mean()),
    )


def cascade_report(
    scores: Any,
    edge_pred: Any,
    cloud_pred: Any,
    gold: Any = None,
    cpt_percents: Sequence[int] = CPT_PERCENTS,
) -> CascadeReport:
    """Endpoint accuracies, the deferral-accuracy curve, APGR and CPT in one pass (APGR None and
    CPT empty when the two accuracies are equal)."""
    curve = deferral_accuracy_curve(scores, edge_pred, cloud_pred, gold)
    edge_acc, cloud_acc, oracle_acc = endpoint_accuracies(edge_pred, cloud_pred, gold)
    no_gap = abs(cloud_acc - edge_acc) < 1e-12  # possible on small or easy data sets
    return CascadeReport(
        edge_accuracy=edge_acc,
        cloud_accuracy=cloud_acc,
        oracle_accuracy=oracle_acc,
        apgr=None if no_gap else apgr(curve, edge_acc, cloud_acc),
        cpt={} if no_gap else {int(p): cpt(curve, edge_acc, cloud_acc, p) for p in cpt_percents},
        curve=curve,
        reference="cloud" if gold is None else "gold",
    )


def _check_curve(curve: Any) -> np.ndarray:
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 2 or curve.shape[1] != 2 or curve.shape[0] < 2:
        raise InvalidInputError(f"curve must be [M >= 2, 2] rows of (deferral_rate, accuracy), got shape {curve.shape}")
    return curve
