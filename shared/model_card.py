"""The model bundle: a directory with `model.json` (this card), the weights, and `policy.json`.

    bundle/
      model.json    name, monotonic version, labels, input spec, runtime, weights file
      model.onnx    (runtime "onnx": input "input" [N, ...], output "probs" [N, C] softmax)
      policy.json   the deferral policy that belongs to this model (edge bundles)

A card may declare `out_of_scope_label`: what the cascade answers when it abstains.

Both daemons, the updater and `edgecascade train` read and write bundles through this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator

from shared.errors import ConfigError

CARD_FILE = "model.json"
POLICY_FILE = "policy.json"
#: What an abstention answers when the bundle declares no `out_of_scope_label`.
OUT_OF_SCOPE = "out_of_scope"


class InputSpec(BaseModel):
    """What one request carries."""

    kind: Literal["tensor", "text"]
    """`tensor`: a numeric array; `text`: a UTF-8 string."""
    dtype: str = "float32"
    """dtype of a tensor input (ignored for text)."""
    shape: list[int] = Field(default_factory=list)
    """Per-example shape of a tensor input, without the batch dimension; -1 is dynamic."""
    max_chars: int = 4096
    """Longest text accepted; longer text is refused with INVALID_ARGUMENT."""


class ModelCard(BaseModel):
    """The contents of `model.json`."""

    name: str = Field(min_length=1)
    version: int = Field(ge=1)
    """Monotonic version; updates only move it forward (or back through a signed rollback)."""
    labels: list[str] = Field(min_length=2)
    input: InputSpec
    runtime: Literal["onnx", "torch_mlp", "minilm_head", "sleep"]
    """`onnx` runs anywhere (edge); the others are cloud-only and import torch."""
    file: str = "model.onnx"
    """Weights file, relative to the bundle directory."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Runtime-specific settings (featurizer, layer sizes, service time...)."""
    out_of_scope_label: Optional[str] = Field(default=None, min_length=1)
    """The label an abstention answers with (a query that matches no label). It may be one of
    `labels` (a class trained on out-of-scope examples: predicting it is an abstention too) or
    a name of its own. None: `OUT_OF_SCOPE` is answered when the policy abstains."""

    @property
    def abstain_label(self) -> tuple[int, str]:
        """(index, name) of an abstention's answer: the index is -1 unless the declared label is a class."""
        name = self.out_of_scope_label
        if name is None:
            return -1, OUT_OF_SCOPE
        return (self.labels.index(name) if name in self.labels else -1), name

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels


def load_card(bundle_dir: str | Path) -> ModelCard:
    """Read and validate `bundle_dir/model.json`, with an error naming the file and field."""
    path = Path(bundle_dir) / CARD_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model bundle {bundle_dir}: {CARD_FILE} not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None
    if not (Path(bundle_dir) / card.file).exists():
        raise ConfigError(f"{path}: weights file {card.file!r} not found in {bundle_dir}")
    return card


def save_card(bundle_dir: str | Path, card: ModelCard) -> Path:
    path = Path(bundle_dir) / CARD_FILE
    path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return path


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"field {where!r}: {err['msg']}"
