"""`edgecascade export-llm`: a Hugging Face causal-LM checkpoint to an edge model directory.

The ONNX graph (with its KV cache as explicit inputs and outputs, and optional INT8/INT4
weight-only quantization) comes from the onnxruntime-genai model builder, a maintained
exporter that knows ERNIE-4.5 and many other architectures. The edge then runs that graph with
plain onnxruntime and the `tokenizers` library (`edge_agent/llm_runtime.py`): onnxruntime-genai
itself has no wheels for Python 3.10 on arm64, which is what the boards run. Runs where torch
is installed (the cloud extra).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from shared.errors import ConfigError
from shared.llm_card import CARD_FILE, LLMCard, save_llm_card

log = logging.getLogger(__name__)
#: Precision name -> the model builder's precision. INT8/INT4 quantize the MatMul weights only.
PRECISIONS = {"fp32": "fp32", "int8": "int8", "int4": "int4"}


@dataclasses.dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    card: LLMCard
    onnx_bytes: int


def export_llm(src_dir: str | Path, out_dir: str | Path, *, precision: str = "fp32", name: str | None = None) -> ExportReport:
    """Export `src_dir` to `out_dir` (model.onnx, its weights, tokenizer.json, edge_llm.json)."""
    from cloud_router.llm_checkpoint import inspect_checkpoint

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    info = inspect_checkpoint(src_dir)
    src, out = Path(src_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output directory {out} is not empty")
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise ConfigError("export-llm needs the onnxruntime-genai model builder; pip install 'edgecascade[cloud]'")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-llm-") as cache_dir:
        # The builder's command line is its stable interface (its Python entry points change between releases).
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
                   "-p", PRECISIONS[precision], "-e", "cpu", "-c", cache_dir]
        done = subprocess.run(command, capture_output=True, text=True)
    builder_log = done.stdout + done.stderr
    if done.returncode != 0:
        if "not currently supported" in builder_log:
            raise ConfigError(f"export-llm: architecture {info.architecture} is not supported by the onnxruntime-genai "
                              f"model builder; expected one it exports (Ernie4_5ForCausalLM, LlamaForCausalLM, "
                              f"MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, "
                              f"Gemma2ForCausalLM, ...). Serve it from the cloud host instead.")
        last = [line for line in builder_log.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise ConfigError(f"export-llm: the onnxruntime-genai model builder failed on {src}: {last[0]}")
    log.debug("model builder output:\n%s", builder_log)
    _ensure_tokenizer_json(src, out)
    card = _card_from_genai_config(out, name or src.name, info.architecture, precision)
    save_llm_card(out, card)
    onnx_bytes = sum(p.stat().st_size for p in out.glob("model.onnx*"))
    return ExportReport(out_dir=out, card=card, onnx_bytes=onnx_bytes)


def _ensure_tokenizer_json(src: Path, out: Path) -> None:
    """The edge reads tokenizer.json with the `tokenizers` library; make one from any tokenizer
    transformers loads (a sentencepiece model, say) when the builder did not copy one."""
    if (out / "tokenizer.json").is_file():
        return
    if (src / "tokenizer.json").is_file():
        (out / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"export-llm: the tokenizer of {src} has no fast (tokenizers) form to save as tokenizer.json")
    backend.save(str(out / "tokenizer.json"))


def _card_from_genai_config(out: Path, name: str, architecture: str, precision: str) -> LLMCard:
    config = json.loads((out / "genai_config.json").read_text())["model"]
    decoder = config["decoder"]
    eos = config.get("eos_token_id", [])
    return LLMCard(
        name=name, architecture=architecture, precision=precision, file="model.onnx",
        context_tokens=int(config["context_length"]),
        eos_token_ids=[int(eos)] if isinstance(eos, int) else [int(e) for e in eos],
        pad_token_id=int(config.get("pad_token_id", 0) if not isinstance(config.get("pad_token_id"), list)
                         else config["pad_token_id"][0]),
        num_layers=int(decoder["num_hidden_layers"]), kv_heads=int(decoder["num_key_value_heads"]),
        head_dim=int(decoder["head_size"]),
    )


__all__ = ["CARD_FILE", "PRECISIONS", "ExportReport", "export_llm"]
