"""The deferral policy: which requests the edge answers and which go to the cloud.

The policy file (`policy.json` in an edge bundle) is written by `edgecascade calibrate` or by
hand. The edge accepts a request when its confidence score (max_prob, margin, or -entropy)
is at least the threshold, and no rule forces a deferral. Cloud pressure lowers the threshold
toward `min_threshold`, so a saturated cloud receives less.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, model_validator

from shared.errors import ConfigError
from shared.model_card import POLICY_FILE, ModelCard
from shared.signals import Signals


class PolicyFile(BaseModel):
    """Contents of `policy.json`."""

    model_name: str
    """The model this policy was calibrated for; the agent refuses a mismatch."""
    model_version: int
    labels: list[str]
    """Label names of that model, in order; the agent refuses a mismatch."""
    signal: Literal["max_prob", "margin", "entropy"] = "max_prob"
    threshold: float
    """Accept when score >= threshold (score is -entropy for the entropy signal)."""
    min_threshold: Optional[float] = None
    """Lowest threshold cloud pressure may shift to (None: no shift)."""
    max_input_tokens: Optional[int] = Field(default=None, ge=1)
    """Rule: inputs longer than this (words for text, elements for tensors) always defer."""
    guarantee: dict[str, Any] = Field(default_factory=dict)
    """What calibration certified (method, epsilon, delta, n), for humans and `fleet status`."""

    @classmethod
    def for_card(cls, card: ModelCard, **fields: Any) -> "PolicyFile":
        """A policy for the model `card` describes (its name, version and labels), with `fields`."""
        return cls(model_name=card.name, model_version=card.version, labels=card.labels, **fields)

    @model_validator(mode="after")
    def _bounds(self) -> "PolicyFile":
        if self.min_threshold is not None and self.min_threshold > self.threshold:
            raise ValueError(f"min_threshold {self.min_threshold} is above threshold {self.threshold}")
        return self


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str  # "" when accepted; "low_confidence", "input_too_long"
    threshold: float


class DeferralPolicy:
    def __init__(self, spec: PolicyFile) -> None:
        self.spec = spec

    def threshold_at(self, pressure: float) -> float:
        """Threshold in force under a cloud pressure in [0, 1] (clipped)."""
        base = self.spec.threshold
        if self.spec.min_threshold is None:
            return base
        p = min(max(pressure, 0.0), 1.0)
        return base - p * (base - self.spec.min_threshold)

    def score(self, signals: Signals) -> float:
        value = getattr(signals, self.spec.signal)
        return -value if self.spec.signal == "entropy" else value

    def decide(self, signals: Signals, input_length: int, pressure: float = 0.0) -> Decision:
        threshold = self.threshold_at(pressure)
        if self.spec.max_input_tokens is not None and input_length > self.spec.max_input_tokens:
            return Decision(False, "input_too_long", threshold)
        if self.score(signals) >= threshold:
            return Decision(True, "", threshold)
        return Decision(False, "low_confidence", threshold)

    def check_matches(self, card: ModelCard) -> None:
        """Refuse a policy calibrated for another model, naming both."""
        if self.spec.model_name != card.name or self.spec.labels != card.labels:
            raise ConfigError(
                f"policy is for model {self.spec.model_name!r} v{self.spec.model_version} "
                f"({len(self.spec.labels)} labels) but the model is {card.name!r} v{card.version} ({len(card.labels)} labels)"
            )
        if self.spec.model_version != card.version:
            raise ConfigError(
                f"policy is for model {self.spec.model_name!r} version {self.spec.model_version} "
                f"but the model is version {card.version}"
            )


def load_policy(path: str | Path) -> DeferralPolicy:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return DeferralPolicy(PolicyFile.model_validate(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ConfigError(f"{path}: field {where!r}: {err['msg']}") from None


def save_policy(bundle_dir: str | Path, spec: PolicyFile) -> Path:
    path = Path(bundle_dir) / POLICY_FILE
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    return path
