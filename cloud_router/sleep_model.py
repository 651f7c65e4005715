"""A stand-in cloud model with a known service time, for scheduler benchmarks and tests.

Each `predict` call takes `batch_service_ms + per_item_ms * N` milliseconds of wall time (a
lower bound: the thread sleeps until then) and answers deterministically: the top class of an
input is a hash of its bytes, so the same input always gets the same answer, in any batch, in
any process. No torch, no weights: the bundle is `model.json` alone (its `file` points at itself).

    options: {"batch_service_ms": 20, "per_item_ms": 0, "confidence": 1.0}
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError
from shared.model import Model, ModelInput
from shared.model_card import CARD_FILE, InputSpec, ModelCard, save_card


class SleepOptions(BaseModel):
    """`options` of a runtime "sleep" card."""

    model_config = ConfigDict(extra="forbid")

    batch_service_ms: float = Field(default=20.0, ge=0)
    """Fixed cost of one batch, whatever its size."""
    per_item_ms: float = Field(default=0.0, ge=0)
    """Extra cost per input in the batch."""
    confidence: float = Field(default=1.0, gt=0, le=1)
    """Probability given to the hashed class; the rest is spread evenly over the others."""


def hashed_label(value: ModelInput, num_classes: int) -> int:
    """The class a sleep model answers for `value`: stable across processes and batches."""
    digest = hashlib.blake2b(digest_size=8)
    if isinstance(value, str):
        digest.update(b"text:")
        digest.update(value.encode("utf-8"))
    else:
        array = np.ascontiguousarray(value)
        digest.update(f"{array.dtype.str}:{array.shape}:".encode())
        digest.update(array.tobytes())
    return int.from_bytes(digest.digest(), "little") % num_classes


def service_time_ms(options: SleepOptions, batch_size: int) -> float:
    return options.batch_service_ms + options.per_item_ms * batch_size


class SleepModel(Model):
    """Runtime "sleep": sleeps for the configured service time, answers a hash of the input."""

    def __init__(self, card: ModelCard, bundle_dir: Path) -> None:
        super().__init__(card, bundle_dir)
        self.options = _parse_options(card)

    def load(self) -> None:
        self.ready = True

    def predict(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        started = time.perf_counter()
        num_classes = len(self.labels)
        rest = (1.0 - self.options.confidence) / (num_classes - 1)
        probs = np.full((len(inputs), num_classes), rest, dtype=np.float32)
        for row, value in enumerate(inputs):
            probs[row, hashed_label(value, num_classes)] = self.options.confidence
        wake_at = started + service_time_ms(self.options, len(inputs)) / 1000.0
        while (left_s := wake_at - time.perf_counter()) > 0:
            time.sleep(left_s)
        return probs


def _parse_options(card: ModelCard) -> SleepOptions:
    try:
        options = SleepOptions.model_validate(card.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ConfigError(f"model {card.name!r} (runtime sleep): option {where!r}: {err['msg']}") from None
    if options.confidence <= 1.0 / len(card.labels):
        raise ConfigError(
            f"model {card.name!r} (runtime sleep): option 'confidence' {options.confidence} must exceed "
            f"1/{len(card.labels)} so the hashed class is the top one"
        )
    return options


def write_sleep_bundle(
    bundle_dir: str | Path,
    *,
    name: str = "sleep",
    version: int = 1,
    labels: Sequence[str] = tuple(str(i) for i in range(10)),
    input_spec: InputSpec | None = None,
    batch_service_ms: float = 20.0,
    per_item_ms: float = 0.0,
    confidence: float = 1.0,
) -> Path:
    """Write a runtime "sleep" bundle (just `model.json`) and return its directory."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    options = SleepOptions(batch_service_ms=batch_service_ms, per_item_ms=per_item_ms, confidence=confidence)
    card = ModelCard(
        name=name,
        version=version,
        labels=list(labels),
        input=input_spec or InputSpec(kind="tensor", dtype="float32", shape=[64]),
        runtime="sleep",
        file=CARD_FILE,
        options=options.model_dump(),
    )
    save_card(bundle_dir, card)
    return bundle_dir
