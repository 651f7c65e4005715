"""The internal result of one inference, before it becomes a proto."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    label: int
    label_name: str
    probabilities: np.ndarray  # float32 [num_classes]
    model_name: str
    model_version: int

    @classmethod
    def from_probs(cls, probs: np.ndarray, labels: list[str], model_name: str, model_version: int) -> "Prediction":
        probs = np.asarray(probs, dtype=np.float32)
        label = int(np.argmax(probs))
        return cls(label, labels[label], probs, model_name, model_version)
