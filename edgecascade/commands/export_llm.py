"""`edgecascade export-llm SRC_DIR OUT_DIR`: a Hugging Face causal LM to an edge ONNX directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export-llm",
        help="export a Hugging Face causal LM to ONNX (with KV cache) for the edge",
        description="Exports SRC_DIR (a Hugging Face checkpoint: config.json, weights, tokenizer) to OUT_DIR with the "
        "onnxruntime-genai model builder: model.onnx with the KV cache as inputs and outputs, tokenizer.json and "
        "edge_llm.json. The edge runs it with onnxruntime and tokenizers, without torch. Needs the cloud extra. "
        "Then compares greedy tokens of the export with transformers on --agreement-prompts and writes the "
        "measured agreement to OUT_DIR/export_report.json.",
    )
    parser.add_argument("src_dir", type=Path, help="Hugging Face checkpoint directory")
    parser.add_argument("out_dir", type=Path, help="new (or empty) output directory")
    parser.add_argument("--precision", choices=("fp32", "int8", "int4"), default="fp32",
                        help="fp32, or INT8/INT4 weight-only quantization of the MatMul weights (default: fp32)")
    parser.add_argument("--name", default=None, help="model name (default: the source directory's name)")
    parser.add_argument("--agreement-prompts", type=Path, default=None,
                        help="text file, one prompt a line, for the greedy agreement check (default: five built-in)")
    parser.add_argument("--agreement-tokens", type=int, default=32, help="new tokens per agreement prompt (default: 32)")
    parser.add_argument("--no-agreement", action="store_true", help="skip the agreement check")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edgecascade.offline.llm_agreement import DEFAULT_PROMPTS, greedy_agreement
    from edgecascade.offline.llm_export import export_llm
    prompts = read_prompts(args.agreement_prompts, "--agreement-prompts") if args.agreement_prompts else list(DEFAULT_PROMPTS)
    report = export_llm(args.src_dir, args.out_dir, precision=args.precision, name=args.name)
    print(f"exported {report.card.architecture} ({report.card.precision}, {report.onnx_bytes / 1e6:.1f} MB) "
          f"to {report.out_dir}")
    summary = {"card": dataclasses.asdict(report.card), "onnx_bytes": report.onnx_bytes}
    if not args.no_agreement:
        agreement = greedy_agreement(args.src_dir, args.out_dir, prompts, max_new_tokens=args.agreement_tokens)
        summary["agreement"] = {**dataclasses.asdict(agreement), "exact_rate": agreement.exact_rate}
        print(f"greedy agreement with transformers on {agreement.prompts} prompts: "
              f"{agreement.exact_sequences}/{agreement.prompts} identical, "
              f"{agreement.prefix_agreement:.1%} of tokens before the first difference")
    (args.out_dir / "export_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def read_prompts(path: Path, flag: str) -> list[str]:
    """The non-empty lines of a UTF-8 prompt file; InvalidInputError naming the flag otherwise."""
    from shared.errors import InvalidInputError

    try:
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{flag}: {exc}") from None
    if not prompts:
        raise InvalidInputError(f"{flag}: {path} has no prompts")
    return prompts
