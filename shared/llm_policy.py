"""The deferral policy for generation (`llm_policy.json` in the edge LM directory).

The edge scores a sequence by the minimum or a low quantile of its per-token top probability.
It checks the running score after every token from `min_tokens` on and defers (stops spending
compute) the first time it falls below `threshold`; a sequence that ends before `min_tokens`
is checked once at its end. Calibration scores each held-out sequence the same way
(`decision_score`), so the certified threshold holds for the online rule, early stops included.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from shared.errors import ConfigError
from shared.llm_request import SequenceSignals

LLM_POLICY_FILE = "llm_policy.json"
LLM_SIGNALS = ("min_top_prob", "quantile_top_prob")


@dataclasses.dataclass(frozen=True)
class LLMPolicy:
    model_name: str
    threshold: float
    signal: str = "min_top_prob"
    quantile: float = 0.1
    min_tokens: int = 4
    guarantee: Optional[dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.signal not in LLM_SIGNALS:
            raise ConfigError(f"llm policy: signal must be one of {', '.join(LLM_SIGNALS)}, got {self.signal!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"llm policy: threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.quantile <= 1.0:
            raise ConfigError(f"llm policy: quantile must be in [0, 1], got {self.quantile}")
        if self.min_tokens < 1:
            raise ConfigError(f"llm policy: min_tokens must be at least 1, got {self.min_tokens}")

    def value(self, signals: SequenceSignals) -> float:
        return signals.min_top_prob if self.signal == "min_top_prob" else signals.quantile_top_prob

    def should_defer(self, signals: SequenceSignals) -> bool:
        """The early check, asked after each token: defer once the running score is too low."""
        return signals.tokens >= self.min_tokens and self.value(signals) < self.threshold

    def accepts_final(self, signals: SequenceSignals) -> bool:
        """The check at the end of a sequence that never reached `min_tokens`."""
        return signals.tokens >= self.min_tokens or self.value(signals) >= self.threshold

    def decision_score(self, top_probs: Sequence[float]) -> float:
        """The lowest running score the online rule would see for a whole sequence: the edge
        accepts it exactly when this is >= threshold."""
        values = np.asarray(top_probs, dtype=np.float64)
        if values.size == 0:
            return 1.0
        first = min(self.min_tokens, values.size)
        if self.signal == "min_top_prob":
            return float(values.min())  # the running minimum only falls; its last value is the lowest
        return float(min(np.quantile(values[:t], self.quantile) for t in range(first, values.size + 1)))


def save_llm_policy(model_dir: str | Path, policy: LLMPolicy) -> Path:
    path = Path(model_dir) / LLM_POLICY_FILE
    path.write_text(json.dumps(dataclasses.asdict(policy), indent=2) + "\n")
    return path


def load_llm_policy(model_dir: str | Path) -> Optional[LLMPolicy]:
    """The policy in `model_dir`, or None when there is none (the edge then answers everything)."""
    path = Path(model_dir) / LLM_POLICY_FILE
    if not path.is_file():
        return None
    try:
        return LLMPolicy(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid llm policy ({exc})") from None
