"""The deferral policy: which requests the edge answers, which go to the cloud, which are out of scope.

The policy file (`policy.json` in an edge bundle) is written by `edgecascade calibrate` or by
hand. The edge accepts a request when its confidence score (max_prob, margin, or negated
entropy: higher is always more confident) is at least the threshold, and no rule forces a
deferral. Cloud pressure lowers the threshold toward `min_threshold`, so a saturated cloud
receives less.

Out of scope: with `abstain_threshold` set, a request whose edge score is below it matches no
label; the cascade answers it as out of scope (route `abstain`) without asking the cloud.
With `cloud_abstain_threshold` set, a deferred request whose cloud answer scores below it (the
same signal, on the cloud's probabilities) is out of scope too. So the scores split in three:

    score < abstain_threshold  ->  abstain     abstain_threshold <= score < threshold  ->  cloud
    score >= threshold         ->  edge
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
    abstain_threshold: Optional[float] = None
    """Edge score below this: out of scope, answered without the cloud (None: never abstain).
    At most `min_threshold` (or `threshold`): pressure never moves it."""
    cloud_abstain_threshold: Optional[float] = None
    """The cloud answer's score (same signal) below this: out of scope (None: never)."""
    abstain_guarantee: dict[str, Any] = Field(default_factory=dict)
    """What abstain calibration measured (in-scope accuracy cost, out-of-scope recall, n)."""

    @classmethod
    def for_card(cls, card: ModelCard, **fields: Any) -> "PolicyFile":
        """A policy for the model `card` describes (its name, version and labels), with `fields`."""
        return cls(model_name=card.name, model_version=card.version, labels=card.labels, **fields)

    @model_validator(mode="after")
    def _bounds(self) -> "PolicyFile":
        if self.min_threshold is not None and self.min_threshold > self.threshold:
            raise ValueError(f"min_threshold {self.min_threshold} is above threshold {self.threshold}")
        lowest = self.threshold if self.min_threshold is None else self.min_threshold
        if self.abstain_threshold is not None and self.abstain_threshold > lowest:
            which = "threshold" if self.min_threshold is None else "min_threshold"
            raise ValueError(f"abstain_threshold {self.abstain_threshold} is above {which} {lowest}: "
                             "the edge would abstain on requests it accepts")
        return self


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str  # "" when accepted; "low_confidence", "input_too_long", "out_of_scope"
    threshold: float
    abstain: bool = False
    """The edge's score is below the abstain threshold: answer out of scope, do not defer."""


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
        score = self.score(signals)
        if score >= threshold:
            return Decision(True, "", threshold)
        if self.spec.abstain_threshold is not None and score < self.spec.abstain_threshold:
            return Decision(False, "out_of_scope", threshold, abstain=True)
        return Decision(False, "low_confidence", threshold)

    def cloud_abstains(self, cloud_signals: Signals) -> bool:
        """Whether a cloud answer with these signals (of the cloud's probabilities) is out of scope."""
        return self.spec.cloud_abstain_threshold is not None and self.score(cloud_signals) < self.spec.cloud_abstain_threshold

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
