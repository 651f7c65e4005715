"""Out-of-scope queries: calibrating the policy's abstain thresholds, and measuring the cascade
on mixed traffic (in-scope and out-of-scope queries together).

The cascade with a deferral threshold t, an edge abstain threshold a <= t and a cloud abstain
threshold c answers each query (edge score s, cloud score s_c, same signal) as

    s >= t           the edge's label      (out of scope if it is the bundle's out-of-scope class)
    a <= s < t       the cloud's label, or out of scope when s_c < c (or it is that class)
    s < a            out of scope, and the cloud is never asked

In-scope accuracy is over in-scope queries (an abstention there is wrong); out-of-scope
recall is the share of out-of-scope queries answered as out of scope; the deferral rate is
over all traffic: what the cloud really receives.

`calibrate_abstain` picks (a, c) on data with out-of-scope examples: the highest out-of-scope
recall whose in-scope accuracy is at most `max_in_scope_cost` below the cascade's without
abstaining, ties broken by the lower deferral rate. The cost is measured on the calibration
set itself (empirical, no certificate like Learn then Test's): check it on held-out data, as
`edgecascade bench cascade` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from shared.errors import CalibrationError, InvalidInputError

#: Candidate thresholds per side: quantiles of the scores (plus "never").
CANDIDATES = 101


@dataclass(frozen=True)
class MixedTraffic:
    """One cascade's outcome on mixed traffic."""

    in_scope_accuracy: float
    out_of_scope_recall: Optional[float]
    """None when the data has no out-of-scope queries."""
    deferral_rate: float
    abstain_rate: float
    out_of_scope_deferral_rate: Optional[float]
    """Share of out-of-scope queries sent to the cloud."""

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


@dataclass(frozen=True)
class AbstainCalibration:
    abstain_threshold: Optional[float]
    """Edge score below this: out of scope (None: the edge never abstains)."""
    cloud_abstain_threshold: Optional[float]
    """Cloud score below this: out of scope (None: the cloud's answers are kept)."""
    max_in_scope_cost: float
    n: int
    n_out_of_scope: int
    baseline: MixedTraffic
    """The cascade at the same deferral threshold without abstaining."""
    calibrated: MixedTraffic

    def guarantee(self) -> dict[str, Any]:
        """What `PolicyFile.abstain_guarantee` stores."""
        return {
            "method": "empirical",
            "max_in_scope_cost": self.max_in_scope_cost,
            "n": self.n,
            "n_out_of_scope": self.n_out_of_scope,
            "in_scope_cost": self.baseline.in_scope_accuracy - self.calibrated.in_scope_accuracy,
            "out_of_scope_recall": self.calibrated.out_of_scope_recall,
            "deferral_rate": self.calibrated.deferral_rate,
            "deferral_rate_without_abstaining": self.baseline.deferral_rate,
            "statement": (
                f"on the {self.n} calibration examples ({self.n_out_of_scope} out of scope): in-scope accuracy "
                f"{self.baseline.in_scope_accuracy - self.calibrated.in_scope_accuracy:.4f} below the cascade "
                f"without abstaining (allowed {self.max_in_scope_cost:g}), out-of-scope recall "
                f"{self.calibrated.out_of_scope_recall:.4f}; empirical, not certified"
            ),
        }


def check_mixed(edge_scores: Any, edge_pred: Any, cloud_scores: Any, cloud_pred: Any, gold: Any,
                out_of_scope: Any) -> tuple[np.ndarray, ...]:
    """Validate and convert: scores float64 [N] (finite), predictions and gold int64 [N], mask bool [N]."""
    arrays = [np.asarray(edge_scores, dtype=np.float64)]
    n = arrays[0].shape
    if arrays[0].ndim != 1 or arrays[0].size == 0:
        raise InvalidInputError(f"edge_scores must be a non-empty 1-D array, got shape {arrays[0].shape}")
    for name, value, kind in (("edge_pred", edge_pred, np.int64), ("cloud_scores", cloud_scores, np.float64),
                              ("cloud_pred", cloud_pred, np.int64), ("gold", gold, np.int64),
                              ("out_of_scope", out_of_scope, bool)):
        array = np.asarray(value)
        if array.shape != n:
            raise InvalidInputError(f"{name} has shape {array.shape}, edge_scores have {n}")
        arrays.append(array.astype(kind))
    for name, array in (("edge_scores", arrays[0]), ("cloud_scores", arrays[2])):
        if not np.all(np.isfinite(array)):
            raise InvalidInputError(f"{name} contain non-finite values")
    return tuple(arrays)


def mixed_traffic(edge_scores: Any, edge_pred: Any, cloud_scores: Any, cloud_pred: Any, gold: Any, out_of_scope: Any,
                  *, threshold: float, abstain_threshold: Optional[float] = None,
                  cloud_abstain_threshold: Optional[float] = None, oos_class: int = -1) -> MixedTraffic:
    """The cascade's outcome (see the module docstring). `oos_class` >= 0 is a trained out-of-scope
    class: predicting it is an abstention. Gold labels of out-of-scope queries are ignored."""
    s, e, sc, c, g, oos = check_mixed(edge_scores, edge_pred, cloud_scores, cloud_pred, gold, out_of_scope)
    a = -np.inf if abstain_threshold is None else abstain_threshold
    ca = -np.inf if cloud_abstain_threshold is None else cloud_abstain_threshold
    answers = _answers(s, e, sc, c, threshold, np.array([a]), np.array([ca]), oos_class)
    abstained, deferred = answers["abstained"][0, 0], answers["deferred"][0]
    correct = (answers["label"][0, 0] == g) & ~abstained
    return _summary(correct, abstained, deferred, oos)


def _answers(s, e, sc, c, threshold, a_values, ca_values, oos_class):
    """Vectorised over candidate thresholds: label [A, C, N], abstained [A, C, N], deferred [A, N]."""
    accept = s >= threshold
    edge_abstains = s[None, :] < a_values[:, None]                      # [A, N]
    deferred = ~accept[None, :] & ~edge_abstains                       # [A, N]
    cloud_abstains = (sc[None, :] < ca_values[:, None]) | (c == oos_class)[None, :]   # [C, N]
    edge_oos_label = accept & (e == oos_class)
    abstained = (edge_abstains[:, None, :] | (deferred[:, None, :] & cloud_abstains[None, :, :])
                 | edge_oos_label[None, None, :])
    label = np.where(accept, e, c)
    return {"label": np.broadcast_to(label, abstained.shape), "abstained": abstained, "deferred": deferred}


def _summary(correct: np.ndarray, abstained: np.ndarray, deferred: np.ndarray, oos: np.ndarray) -> MixedTraffic:
    in_scope = ~oos
    n_oos = int(oos.sum())
    return MixedTraffic(
        in_scope_accuracy=float(correct[in_scope].mean()) if in_scope.any() else float("nan"),
        out_of_scope_recall=float(abstained[oos].mean()) if n_oos else None,
        deferral_rate=float(deferred.mean()),
        abstain_rate=float(abstained.mean()),
        out_of_scope_deferral_rate=float(deferred[oos].mean()) if n_oos else None,
    )


def _candidates(scores: np.ndarray) -> np.ndarray:
    """-inf (never) and score quantiles, ascending and distinct."""
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, CANDIDATES))
    return np.unique(np.concatenate(([-np.inf], quantiles)))


def calibrate_abstain(edge_scores: Any, edge_pred: Any, cloud_scores: Any, cloud_pred: Any, gold: Any,
                      out_of_scope: Any, *, threshold: float, max_in_scope_cost: float, oos_class: int = -1,
                      edge: bool = True, cloud: bool = True) -> AbstainCalibration:
    """Abstain thresholds for a policy with deferral threshold `threshold` (see the module docstring).

    `edge` / `cloud` False keep that side from abstaining. Raises CalibrationError without
    out-of-scope or in-scope examples.
    """
    s, e, sc, c, g, oos = check_mixed(edge_scores, edge_pred, cloud_scores, cloud_pred, gold, out_of_scope)
    try:
        max_in_scope_cost = float(max_in_scope_cost)
    except (TypeError, ValueError):
        raise InvalidInputError(f"max_in_scope_cost must be a number in [0, 1), got {max_in_scope_cost!r}") from None
    if not (0.0 <= max_in_scope_cost < 1.0):
        raise InvalidInputError(f"max_in_scope_cost must be in [0, 1), got {max_in_scope_cost!r}")
    n_oos = int(oos.sum())
    if n_oos == 0:
        raise CalibrationError("the calibration data has no out-of-scope examples: nothing to calibrate abstention on")
    if n_oos == oos.size:
        raise CalibrationError("the calibration data has only out-of-scope examples: the in-scope cost is unmeasurable")
    a_values = _candidates(s[s < threshold]) if edge and np.any(s < threshold) else np.array([-np.inf])
    a_values = a_values[a_values <= threshold]
    ca_values = _candidates(sc) if cloud else np.array([-np.inf])
    answers = _answers(s, e, sc, c, threshold, a_values, ca_values, oos_class)
    abstained = answers["abstained"]                                   # [A, C, N]
    correct = (answers["label"] == g) & ~abstained
    in_scope = ~oos
    accuracy = correct[:, :, in_scope].mean(axis=2)                    # [A, C]
    recall = abstained[:, :, oos].mean(axis=2)
    deferral = np.broadcast_to(answers["deferred"].mean(axis=1)[:, None], accuracy.shape)
    base_accuracy = accuracy[0, 0]                                     # -inf, -inf: never abstain
    allowed = accuracy >= base_accuracy - max_in_scope_cost - 1e-12
    # highest recall first, then lowest deferral, then the highest in-scope accuracy
    key = np.where(allowed, recall * 1e6 - deferral * 1e3 + accuracy, -np.inf)
    i, j = np.unravel_index(int(np.argmax(key)), key.shape)
    def summary(ai: int, cj: int) -> MixedTraffic:
        return _summary(correct[ai, cj], abstained[ai, cj], answers["deferred"][ai], oos)
    return AbstainCalibration(
        abstain_threshold=None if np.isneginf(a_values[i]) else float(a_values[i]),
        cloud_abstain_threshold=None if np.isneginf(ca_values[j]) else float(ca_values[j]),
        max_in_scope_cost=max_in_scope_cost,
        n=int(s.size),
        n_out_of_scope=n_oos,
        baseline=summary(0, 0),
        calibrated=summary(i, j),
    )
