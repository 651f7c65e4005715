"""Confidence signals from a probability vector, and the score a policy thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SignalName = Literal["max_prob", "margin", "entropy"]
SIGNAL_NAMES: tuple[str, ...] = ("max_prob", "margin", "entropy")


@dataclass(frozen=True)
class Signals:
    max_prob: float
    margin: float
    entropy: float


def signal_matrix(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised signals for probs [N, C]: each a float64 array [N]."""
    probs = np.asarray(probs, dtype=np.float64)
    top2 = -np.sort(-probs, axis=1)[:, :2]
    clipped = np.clip(probs, 1e-12, 1.0)
    return {
        "max_prob": top2[:, 0],
        "margin": top2[:, 0] - top2[:, 1],
        "entropy": -(probs * np.log(clipped)).sum(axis=1),
    }


def signals_of(probs: np.ndarray) -> Signals:
    """Signals of one probability vector [C >= 2]: the values `signal_matrix` gives for one row,
    without its sort and dict (this runs on every edge request)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    second, first = np.partition(p, p.size - 2)[-2:].tolist()
    entropy = -float(np.dot(p, np.log(np.minimum(np.maximum(p, 1e-12), 1.0))))  # np.clip costs more
    return Signals(first, first - second, entropy)


def score_name(signal: str) -> str:
    """What a policy's threshold is compared with, for messages: entropy's score is its negation."""
    return "-entropy (negated entropy)" if signal == "entropy" else signal


def confidence_scores(probs: np.ndarray, signal: str) -> np.ndarray:
    """Higher means more confident, for every signal: entropy is negated."""
    values = signal_matrix(probs)[signal]
    return -values if signal == "entropy" else values
