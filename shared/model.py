"""One base class for every model either daemon hosts (`shared.model_loader` builds them).

Heavy work happens in `load()`, never in `__init__`. `predict` is synchronous and CPU-bound;
daemons call it off the event loop.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from shared.errors import InvalidInputError
from shared.model_card import ModelCard

#: One request's input: a numeric array (without batch dimension) or a string.
ModelInput = Union[np.ndarray, str]


class Model(abc.ABC):
    """A classifier: a batch of inputs in, a [N, num_classes] float32 probability matrix out."""

    def __init__(self, card: ModelCard, bundle_dir: Path) -> None:
        self.card = card
        self.bundle_dir = Path(bundle_dir)
        self.ready = False

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> int:
        return self.card.version

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    @abc.abstractmethod
    def load(self) -> None:
        """Read weights and build sessions. Sets `ready`."""

    @abc.abstractmethod
    def predict(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        """Probabilities for a batch of already-validated inputs."""

    def unload(self) -> None:
        self.ready = False

    def check_input(self, value: ModelInput) -> ModelInput:
        """Refuse what this model cannot take, with a message naming the problem."""
        spec = self.card.input
        if spec.kind == "text":
            if not isinstance(value, str):
                raise InvalidInputError(f"model {self.name!r} takes text, got a tensor")
            if not value.strip():
                raise InvalidInputError("text input is empty")
            if len(value) > spec.max_chars:
                raise InvalidInputError(f"text input is {len(value)} characters; model {self.name!r} takes at most {spec.max_chars}")
            return value
        if isinstance(value, str):
            raise InvalidInputError(f"model {self.name!r} takes a {spec.dtype} tensor, got text")
        # Cheap comparisons first (this runs on every request): dtype == str, tuple == tuple.
        if value.dtype != spec.dtype and value.dtype.name != spec.dtype:  # name: any byte order
            raise InvalidInputError(f"model {self.name!r} takes dtype {spec.dtype}, got {value.dtype.name}")
        if value.shape != tuple(spec.shape) and (len(value.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, value.shape)
        )):
            raise InvalidInputError(f"model {self.name!r} takes shape {spec.shape}, got {list(value.shape)}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InvalidInputError("tensor input holds NaN or infinity")
        return value

    def input_length(self, value: ModelInput) -> int:
        """Length used by the `max_input_tokens` rule: words for text, elements for tensors."""
        return len(value.split()) if isinstance(value, str) else int(value.size)
