"""Checks a Hugging Face causal-LM checkpoint directory before anything heavy loads it, so a
missing file or an unsupported architecture is one clear error naming what was expected.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from shared.errors import ConfigError

#: The architectures the issue names first; any other `*ForCausalLM` that AutoModelForCausalLM
#: knows is accepted too.
ERNIE_ARCHITECTURES = ("Ernie4_5ForCausalLM", "Ernie4_5_MoeForCausalLM")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    architecture: str
    model_type: str
    context_tokens: int


def causal_lm_architectures() -> set[str]:
    """Every architecture name AutoModelForCausalLM can build, from transformers' own table."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return names


def inspect_checkpoint(model_dir: str | Path) -> CheckpointInfo:
    """CheckpointInfo for a loadable causal-LM directory; ConfigError naming the problem otherwise."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ConfigError(f"causal-LM checkpoint {path}: not a directory (expected a Hugging Face model directory "
                          f"with config.json, weights and a tokenizer)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"causal-LM checkpoint {path}: config.json is missing")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"causal-LM checkpoint {path}: config.json is not valid JSON ({exc})") from None
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else ""
    model_type = str(config.get("model_type", ""))
    known = causal_lm_architectures()
    if architecture not in known:
        raise ConfigError(
            f"causal-LM checkpoint {path}: architecture {architecture or '(none)'!r} (model_type {model_type!r}) is not "
            f"a causal language model; expected {' or '.join(ERNIE_ARCHITECTURES)}, or another architecture that "
            f"transformers' AutoModelForCausalLM builds (a '*ForCausalLM')")
    weights = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise ConfigError(f"causal-LM checkpoint {path}: no weights; expected one of {', '.join(WEIGHT_FILES)}")
    if weights[0].endswith(".index.json"):
        _check_shards(path, weights[0])
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"causal-LM checkpoint {path}: no tokenizer; expected one of {', '.join(TOKENIZER_FILES)}")
    context = int(config.get("max_position_embeddings") or config.get("n_positions") or config.get("seq_length") or 2048)
    return CheckpointInfo(path=path, architecture=architecture, model_type=model_type, context_tokens=context)


def _check_shards(path: Path, index_name: str) -> None:
    try:
        shards = set(json.loads((path / index_name).read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"causal-LM checkpoint {path}: {index_name} is not a valid shard index ({exc})") from None
    missing = sorted(name for name in shards if not (path / name).is_file())
    if missing:
        raise ConfigError(f"causal-LM checkpoint {path}: {index_name} lists shards that are missing: {', '.join(missing)}")
