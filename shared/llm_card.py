"""`edge_llm.json`: what the edge needs to know about an exported causal LM, written by
`edgecascade export-llm` and read by the edge runtime (no torch, no transformers)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from shared.errors import ConfigError

CARD_FILE = "edge_llm.json"


@dataclasses.dataclass(frozen=True)
class LLMCard:
    name: str
    architecture: str
    precision: str              # fp32, int8 or int4 (weight-only)
    file: str                   # the ONNX graph, its inputs input_ids, attention_mask, past_key_values.N.key/value
    context_tokens: int
    eos_token_ids: list[int]
    pad_token_id: int
    num_layers: int
    kv_heads: int
    head_dim: int


def save_llm_card(model_dir: Path, card: LLMCard) -> None:
    (Path(model_dir) / CARD_FILE).write_text(json.dumps(dataclasses.asdict(card), indent=2) + "\n")


def load_llm_card(model_dir: str | Path) -> LLMCard:
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        raise ConfigError(f"edge LM directory {model_dir}: {CARD_FILE} is missing (make the directory with "
                          f"'edgecascade export-llm SRC_DIR OUT_DIR')")
    try:
        raw = json.loads(path.read_text())
        return LLMCard(**raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid edge LM card ({exc})") from None
