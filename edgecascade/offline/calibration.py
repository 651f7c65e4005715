"""Choosing the deferral threshold from held-out data, and checking the guarantee it claims.

The edge accepts an example when its confidence score is at least the threshold. The loss of
one example is `accepted and edge_pred != cloud_pred`: the accuracy the cascade can lose
against the cloud. Its mean over examples, R(t), upper-bounds the cascade's accuracy drop
versus the cloud (against gold labels as well), so only cloud answers are needed to calibrate.

Methods:
- `ltt` (Learn then Test): a binomial-tail p-value per threshold, tested in a fixed sequence
  from the highest threshold down, so that P(R(t) > epsilon) <= delta.
- `crc` (conformal risk control): E[R(t)] <= epsilon, in expectation over calibration sets.
- `rate`: a fixed cloud budget: the deferral rate on the calibration set is at most a target.

Every threshold returned is one of the calibration scores, so ties are accepted together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
from scipy.stats import binom

from shared.errors import CalibrationError, InvalidInputError
from shared.policy import PolicyFile
from shared.signals import confidence_scores

Method = Literal["ltt", "crc", "rate"]
METHODS: tuple[str, ...] = ("ltt", "crc", "rate")
LOSS_DESCRIPTION = "accepted by the edge and edge_pred != cloud_pred"


@dataclass(frozen=True)
class CalibrationResult:
    """A certified threshold and what it does on the calibration set."""

    method: str
    threshold: float
    """Accept when score >= threshold."""
    n: int
    """Calibration examples used."""
    deferral_rate: float
    """Share of calibration examples with score < threshold."""
    empirical_risk: float
    """Share of calibration examples accepted with edge_pred != cloud_pred."""
    epsilon: Optional[float] = None
    delta: Optional[float] = None
    p_value: Optional[float] = None
    """Binomial-tail p-value at the chosen threshold (ltt only)."""
    target_deferral_rate: Optional[float] = None

    def guarantee(self) -> dict[str, Any]:
        """What was certified, in the form `PolicyFile.guarantee` stores."""
        out: dict[str, Any] = {
            "method": self.method,
            "n": self.n,
            "loss": LOSS_DESCRIPTION,
            "empirical_risk": self.empirical_risk,
            "deferral_rate": self.deferral_rate,
        }
        if self.method == "ltt":
            out.update(epsilon=self.epsilon, delta=self.delta, p_value=self.p_value)
            out["statement"] = (
                f"P(accuracy drop vs cloud > {self.epsilon:g}) <= {self.delta:g} over the draw of the "
                f"{self.n} calibration examples"
            )
        elif self.method == "crc":
            out.update(epsilon=self.epsilon)
            out["statement"] = f"E[accuracy drop vs cloud] <= {self.epsilon:g} (conformal risk control, n={self.n})"
        else:
            out.update(target_deferral_rate=self.target_deferral_rate)
            out["statement"] = (
                f"deferral rate <= {self.target_deferral_rate:g} on the calibration set; no accuracy guarantee"
            )
        return out


# ---------------------------------------------------------------------------------------------
# Input checks


def check_unit_interval(name: str, value: float) -> float:
    """`value` must lie strictly inside (0, 1)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not (0.0 < value < 1.0):
        raise InvalidInputError(f"{name} must be in (0, 1), got {value!r}")
    return value


def check_arrays(
    scores: Any, edge_pred: Any, cloud_pred: Any, gold: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Validate and convert: scores float64 [N] (finite), predictions int64 [N], N >= 1."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise InvalidInputError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise InvalidInputError(f"scores contain {int(np.sum(~np.isfinite(scores)))} non-finite values")
    named = {"edge_pred": edge_pred, "cloud_pred": cloud_pred}
    if gold is not None:
        named["gold"] = gold
    out: dict[str, np.ndarray] = {}
    for name, value in named.items():
        arr = np.asarray(value)
        if arr.shape != scores.shape:
            raise InvalidInputError(f"{name} has shape {arr.shape}, scores have {scores.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise InvalidInputError(f"{name} must hold integer labels, got dtype {arr.dtype}")
        out[name] = arr.astype(np.int64)
    return scores, out["edge_pred"], out["cloud_pred"], out.get("gold")


# ---------------------------------------------------------------------------------------------
# Threshold candidates


@dataclass(frozen=True)
class _Candidates:
    """Distinct scores, highest first, with the loss count of accepting down to each."""

    values: np.ndarray  # [G] distinct scores, descending
    accepted: np.ndarray  # [G] examples with score >= values[g]
    losses: np.ndarray  # [G] accepted examples with edge != cloud


def _candidates(scores: np.ndarray, disagree: np.ndarray) -> _Candidates:
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ends = _group_ends(s)
    return _Candidates(
        values=s[ends],
        accepted=ends + 1,
        losses=np.cumsum(disagree[order])[ends],
    )


def _group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Index of the last element of each run of equal values in a sorted array."""
    return np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))


def ltt_max_losses(n: int, epsilon: float, delta: float) -> int:
    """Largest loss count k with P(Binom(n, epsilon) <= k) <= delta; -1 when even k=0 fails.

    The p-value grows with k, so a threshold passes the LTT test exactly when its loss count
    is at most this number.
    """
    cdf = binom.cdf(np.arange(n + 1), n, epsilon)
    passing = np.flatnonzero(cdf <= delta)
    return int(passing[-1]) if passing.size else -1


def ltt_min_examples(epsilon: float, delta: float) -> int:
    """Fewest calibration examples with which zero losses can pass: (1-epsilon)^n <= delta."""
    n = max(1, math.ceil(math.log(delta) / math.log1p(-epsilon)))
    while n > 1 and (1 - epsilon) ** (n - 1) <= delta:
        n -= 1
    while (1 - epsilon) ** n > delta:
        n += 1
    return n


def crc_max_losses(n: int, epsilon: float) -> int:
    """Largest loss count k with (k + 1) / (n + 1) <= epsilon; -1 when none.

    That is the CRC condition n/(n+1) * Rhat + 1/(n+1) <= epsilon with Rhat = k/n (loss bound 1).
    """
    k = math.floor(epsilon * (n + 1) - 1 + 1e-9)
    while k >= 0 and (k + 1) / (n + 1) > epsilon:
        k -= 1
    return max(k, -1)


def crc_min_examples(epsilon: float) -> int:
    """Fewest calibration examples with which zero losses can pass: 1/(n+1) <= epsilon."""
    n = max(1, math.ceil(1 / epsilon - 1))
    while 1 / (n + 1) > epsilon:
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Calibration


def calibrate_ltt(
    scores: Any, edge_pred: Any, cloud_pred: Any, epsilon: float, delta: float
) -> CalibrationResult:
    """Lowest threshold whose accuracy drop vs cloud is certified: P(R(t) > epsilon) <= delta.

    Thresholds are tested from the highest down with the p-value P(Binom(n, epsilon) <= k(t));
    the scan stops at the first failure. Raises CalibrationError when nothing can be certified.
    """
    epsilon = check_unit_interval("epsilon", epsilon)
    delta = check_unit_interval("delta", delta)
    scores, edge_pred, cloud_pred, _ = check_arrays(scores, edge_pred, cloud_pred)
    n = scores.size
    max_losses = ltt_max_losses(n, epsilon, delta)
    if max_losses < 0:
        raise CalibrationError(
            f"{n} calibration examples cannot certify epsilon={epsilon:g} at delta={delta:g}: "
            f"even zero losses needs at least {ltt_min_examples(epsilon, delta)} examples "
            f"(ceil(log(delta)/log(1-epsilon)))"
        )
    cand = _candidates(scores, edge_pred != cloud_pred)
    g = _last_passing(cand.losses, max_losses)
    if g < 0:
        raise CalibrationError(
            f"no threshold certified at epsilon={epsilon:g}, delta={delta:g}: the most confident "
            f"{int(cand.accepted[0])} of {n} examples already include {int(cand.losses[0])} disagreements "
            f"with the cloud; the edge would have to defer everything"
        )
    k = int(cand.losses[g])
    return CalibrationResult(
        method="ltt",
        threshold=float(cand.values[g]),
        n=n,
        deferral_rate=1.0 - int(cand.accepted[g]) / n,
        empirical_risk=k / n,
        epsilon=epsilon,
        delta=delta,
        p_value=float(binom.cdf(k, n, epsilon)),
    )


def calibrate_crc(scores: Any, edge_pred: Any, cloud_pred: Any, epsilon: float) -> CalibrationResult:
    """Lowest threshold with n/(n+1) * Rhat(t) + 1/(n+1) <= epsilon: E[R(t)] <= epsilon.

    Raises CalibrationError when nothing can be certified.
    """
    epsilon = check_unit_interval("epsilon", epsilon)
    scores, edge_pred, cloud_pred, _ = check_arrays(scores, edge_pred, cloud_pred)
    n = scores.size
    max_losses = crc_max_losses(n, epsilon)
    if max_losses < 0:
        raise CalibrationError(
            f"{n} calibration examples cannot certify epsilon={epsilon:g} with conformal risk control: "
            f"it needs at least {crc_min_examples(epsilon)} examples (1/(n+1) <= epsilon)"
        )
    cand = _candidates(scores, edge_pred != cloud_pred)
    g = _last_passing(cand.losses, max_losses)
    if g < 0:
        raise CalibrationError(
            f"no threshold certified at epsilon={epsilon:g}: the most confident {int(cand.accepted[0])} "
            f"of {n} examples already include {int(cand.losses[0])} disagreements with the cloud; "
            f"the edge would have to defer everything"
        )
    return CalibrationResult(
        method="crc",
        threshold=float(cand.values[g]),
        n=n,
        deferral_rate=1.0 - int(cand.accepted[g]) / n,
        empirical_risk=int(cand.losses[g]) / n,
        epsilon=epsilon,
    )


def calibrate_rate(
    scores: Any, edge_pred: Any, cloud_pred: Any, target_deferral_rate: float
) -> CalibrationResult:
    """Highest threshold whose deferral rate on the calibration set is <= target (a cloud budget).

    A target of 1 may defer everything: the threshold is then just above the highest score.
    """
    try:
        target = float(target_deferral_rate)
    except (TypeError, ValueError):
        raise InvalidInputError(f"target deferral rate must be a number in [0, 1], got {target_deferral_rate!r}") from None
    if not (0.0 <= target <= 1.0):
        raise InvalidInputError(f"target deferral rate must be in [0, 1], got {target_deferral_rate!r}")
    scores, edge_pred, cloud_pred, _ = check_arrays(scores, edge_pred, cloud_pred)
    n = scores.size
    cand = _candidates(scores, edge_pred != cloud_pred)
    # Deferred at values[g]: n - accepted[g]; it shrinks as g grows (lower thresholds).
    deferred = n - cand.accepted
    if target >= 1.0:
        threshold, n_deferred, losses = float(np.nextafter(cand.values[0], np.inf)), n, 0
    else:
        g = int(np.flatnonzero(deferred <= target * n + 1e-9)[0])
        threshold, n_deferred, losses = float(cand.values[g]), int(deferred[g]), int(cand.losses[g])
    return CalibrationResult(
        method="rate",
        threshold=threshold,
        n=n,
        deferral_rate=n_deferred / n,
        empirical_risk=losses / n,
        target_deferral_rate=target,
    )


def calibrate(
    scores: Any,
    edge_pred: Any,
    cloud_pred: Any,
    method: str = "ltt",
    epsilon: Optional[float] = None,
    delta: Optional[float] = None,
    target_deferral_rate: Optional[float] = None,
) -> CalibrationResult:
    """Dispatch to `calibrate_ltt`, `calibrate_crc` or `calibrate_rate` by name."""
    if method == "ltt":
        _require(method, epsilon=epsilon, delta=delta)
        return calibrate_ltt(scores, edge_pred, cloud_pred, epsilon, delta)
    if method == "crc":
        _require(method, epsilon=epsilon)
        return calibrate_crc(scores, edge_pred, cloud_pred, epsilon)
    if method == "rate":
        _require(method, target_deferral_rate=target_deferral_rate)
        return calibrate_rate(scores, edge_pred, cloud_pred, target_deferral_rate)
    raise InvalidInputError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")


def calibrated_policy(policy: PolicyFile, edge_probs: np.ndarray, cloud_pred: Any, *, method: str = "ltt",
                      epsilon: Optional[float] = None, delta: Optional[float] = None,
                      target_deferral_rate: Optional[float] = None, **facts: Any) -> tuple[PolicyFile, CalibrationResult]:
    """Predictions to policy: `policy` with the threshold `calibrate` picks for its signal on the
    edge's probabilities against the cloud's answers, and the guarantee that comes with it,
    plus `facts` (where the predictions came from, say)."""
    scores = confidence_scores(edge_probs, policy.signal)
    result = calibrate(scores, np.asarray(edge_probs).argmax(axis=1), cloud_pred, method=method, epsilon=epsilon,
                       delta=delta, target_deferral_rate=target_deferral_rate)
    guarantee = {**result.guarantee(), "signal": policy.signal, **facts}
    return policy.model_copy(update={"threshold": result.threshold, "guarantee": guarantee}), result


def _require(method: str, **values: Any) -> None:
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise InvalidInputError(f"method {method!r} needs {', '.join(missing)}")


def _last_passing(losses: np.ndarray, max_losses: int) -> int:
    """Index of the lowest candidate still passing; losses grow down the list, so passes form a prefix."""
    return int(np.searchsorted(losses, max_losses, side="right")) - 1


# ---------------------------------------------------------------------------------------------
# Checking the guarantee by re-splitting


@dataclass(frozen=True)
class ViolationReport:
    """How a calibration method behaves over random calibration/test splits of one data set."""

    method: str
    epsilon: float
    delta: Optional[float]
    n_splits: int
    calib_size: int
    test_size: int
    violation_rate: float
    """Share of splits whose realised test drop exceeds epsilon."""
    mean_drop: float
    mean_deferral_rate: float
    """On the test part."""
    uncertified_splits: int
    """Splits where no threshold passed: the cascade defers everything (drop 0, deferral 1)."""
    pool_violation_rate: float
    """Share of splits whose drop on the whole data set exceeds epsilon: the data set taken as
    the population, so this is the rate the guarantee bounds by delta. The test-part rate
    adds test noise and the test part's anti-correlation with the calibration part."""
    drops: np.ndarray
    """[n_splits] realised drop: cloud accuracy - cascade accuracy on the test part."""
    pool_drops: np.ndarray
    """[n_splits] the same drop measured on the whole data set."""
    deferral_rates: np.ndarray
    """[n_splits] test deferral rate."""
    thresholds: np.ndarray
    """[n_splits] chosen threshold (+inf where uncertified)."""

    def summary(self) -> dict[str, Any]:
        """The scalar fields, JSON-ready."""
        return {
            "method": self.method,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "n_splits": self.n_splits,
            "calib_size": self.calib_size,
            "test_size": self.test_size,
            "violation_rate": self.violation_rate,
            "mean_drop": self.mean_drop,
            "p95_drop": float(np.quantile(self.drops, 0.95)),
            "mean_deferral_rate": self.mean_deferral_rate,
            "uncertified_splits": self.uncertified_splits,
            "pool_violation_rate": self.pool_violation_rate,
        }


def calibration_masks(n: int, n_splits: int, calib_size: int, seed: int) -> np.ndarray:
    """[n_splits, n] bool: True marks the calib_size examples each split calibrates on."""
    # A stream of its own, so a seed shared with the data's generator draws different numbers.
    rng = np.random.default_rng([int(seed), 0xCA11B])
    keys = rng.random((n_splits, n))
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    return ranks < calib_size


def guarantee_violation_rate(
    scores: Any,
    edge_pred: Any,
    cloud_pred: Any,
    gold: Any = None,
    epsilon: float = 0.01,
    delta: float = 0.05,
    n_splits: int = 200,
    calib_fraction: float = 0.5,
    seed: int = 0,
    method: str = "ltt",
) -> ViolationReport:
    """Calibrate on a random part, measure the drop on the rest, `n_splits` times (>= 100).

    The drop is cloud accuracy minus cascade accuracy on the test part, against `gold` when
    given, else against the cloud's answers (agreement). Gives the same thresholds as calling
    `calibrate_ltt` / `calibrate_crc` on each calibration part (`calibration_masks`), vectorised
    over splits; a split where nothing is certified defers everything.

    The guarantee is about the true risk; the test part only estimates it, with noise, and
    a calibration part that happened to look good leaves a test part that looks bad. On a
    fixed data set the test-part rate can therefore exceed delta (about 2x delta for 50/50
    splits of 3,080 synthetic points) while the guarantee holds; `pool_violation_rate`
    measures the drop on the whole data set, the population the splits are drawn from.
    """
    if method not in ("ltt", "crc"):
        raise InvalidInputError(f"guarantee check supports methods 'ltt' and 'crc', got {method!r}")
    epsilon = check_unit_interval("epsilon", epsilon)
    delta = check_unit_interval("delta", delta) if method == "ltt" else None
    calib_fraction = check_unit_interval("calib_fraction", calib_fraction)
    if int(n_splits) != n_splits or n_splits < 100:
        raise InvalidInputError(f"n_splits must be an integer >= 100, got {n_splits!r}")
    n_splits = int(n_splits)
    scores, edge_pred, cloud_pred, gold = check_arrays(scores, edge_pred, cloud_pred, gold)
    n = scores.size
    calib_size = int(round(calib_fraction * n))
    if not (1 <= calib_size < n):
        raise InvalidInputError(
            f"calib_fraction={calib_fraction:g} of {n} examples leaves {calib_size} to calibrate "
            f"and {n - calib_size} to test; both must be at least 1"
        )
    test_size = n - calib_size
    if method == "ltt":
        max_losses = ltt_max_losses(calib_size, epsilon, delta)
        needed = ltt_min_examples(epsilon, delta)
    else:
        max_losses = crc_max_losses(calib_size, epsilon)
        needed = crc_min_examples(epsilon)
    if max_losses < 0:
        raise CalibrationError(
            f"calibration parts of {calib_size} examples cannot certify epsilon={epsilon:g}"
            + (f" at delta={delta:g}" if delta is not None else "")
            + f": at least {needed} are needed"
        )

    order = np.argsort(-scores, kind="stable")
    ends = _group_ends(scores[order])
    disagree = (edge_pred != cloud_pred)[order].astype(np.int32)
    if gold is None:
        gain = -disagree  # edge correct - cloud correct, with the cloud as reference
    else:
        gain = ((edge_pred == gold).astype(np.int32) - (cloud_pred == gold).astype(np.int32))[order]

    in_calib = calibration_masks(n, n_splits, calib_size, seed)[:, order]  # descending-score order

    calib_losses = np.cumsum(in_calib * disagree, axis=1, dtype=np.int32)[:, ends]  # [S, G]
    calib_seen = np.cumsum(in_calib, axis=1, dtype=np.int32)[:, ends]
    # A candidate counts only where its score occurs in this split's calibration part.
    present = np.diff(calib_seen, axis=1, prepend=0) > 0
    passing = (calib_losses <= max_losses) & present
    group_index = np.arange(ends.size)
    chosen = np.where(passing, group_index, -1).max(axis=1)  # [S]; passes form a prefix

    in_test = ~in_calib
    test_accepted = np.cumsum(in_test, axis=1, dtype=np.int32)[:, ends]
    test_gain = np.cumsum(in_test * gain, axis=1, dtype=np.int32)[:, ends]
    certified = chosen >= 0
    rows = np.arange(n_splits)
    safe = np.maximum(chosen, 0)
    accepted = np.where(certified, test_accepted[rows, safe], 0)
    drops = np.where(certified, -test_gain[rows, safe], 0) / test_size
    deferral_rates = 1.0 - accepted / test_size
    thresholds = np.where(certified, scores[order][ends][safe], np.inf)
    pool_drops = np.where(certified, -np.cumsum(gain)[ends][safe], 0) / n
    return ViolationReport(
        method=method,
        epsilon=epsilon,
        delta=delta,
        n_splits=n_splits,
        calib_size=calib_size,
        test_size=test_size,
        violation_rate=float(np.mean(drops > epsilon)),
        mean_drop=float(drops.mean()),
        mean_deferral_rate=float(deferral_rates.mean()),
        uncertified_splits=int(np.sum(~certified)),
        pool_violation_rate=float(np.mean(pool_drops > epsilon)),
        drops=drops,
        pool_drops=pool_drops,
        deferral_rates=deferral_rates,
        thresholds=thresholds,
    )
