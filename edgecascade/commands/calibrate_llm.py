"""The generation half of `edgecascade calibrate` (given --llm-prompts): label held-out prompts
with the cloud LM's output, certify the edge LM's deferral threshold, write llm_policy.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.errors import InvalidInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "generation (language models)",
        "With --llm-prompts, calibrate an edge LM (an export-llm directory) against a cloud LM checkpoint instead: "
        "both continue every prompt greedily; the loss is 'accepted by the edge and its text disagrees with the "
        "cloud's'. --method/--epsilon/--delta/--target-deferral-rate apply as above. Writes EDGE_LM_DIR/llm_policy.json.")
    group.add_argument("--llm-prompts", type=Path, metavar="FILE", help="held-out prompts, one a line (UTF-8)")
    group.add_argument("--edge-llm", type=Path, metavar="EDGE_LM_DIR", help="the edge LM directory")
    group.add_argument("--cloud-llm", type=Path, metavar="CLOUD_LM_DIR", help="the cloud LM checkpoint directory")
    group.add_argument("--llm-signal", choices=("min_top_prob", "quantile_top_prob"), default="min_top_prob",
                       help="sequence signal (default min_top_prob)")
    group.add_argument("--llm-quantile", type=float, default=0.1, help="quantile for quantile_top_prob (default 0.1)")
    group.add_argument("--min-tokens", type=int, default=4,
                       help="tokens before the edge may defer early (default 4)")
    group.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    group.add_argument("--similarity", type=float, default=None,
                       help="agree when difflib's similarity ratio is at least this (default: exact match)")


def run(args: argparse.Namespace) -> int:
    from edgecascade.commands.export_llm import read_prompts
    from edgecascade.offline.llm_calibration import calibrate_generation, label_generations
    from shared.llm_card import load_llm_card
    from shared.llm_policy import LLMPolicy, save_llm_policy

    if args.edge_llm is None or args.cloud_llm is None:
        raise InvalidInputError("--llm-prompts needs --edge-llm and --cloud-llm")
    if args.similarity is not None and not 0.0 <= args.similarity <= 1.0:
        raise InvalidInputError(f"--similarity must be in [0, 1], got {args.similarity}")
    prompts = read_prompts(args.llm_prompts, "--llm-prompts")
    card = load_llm_card(args.edge_llm)
    template = LLMPolicy(model_name=card.name, threshold=0.0, signal=args.llm_signal, quantile=args.llm_quantile,
                         min_tokens=args.min_tokens)
    labelled = label_generations(args.edge_llm, args.cloud_llm, prompts, max_new_tokens=args.max_new_tokens,
                                 similarity=args.similarity)
    print(f"{len(prompts)} prompts: the edge agrees with the cloud on {int(labelled.agree.sum())} "
          f"({'exact match' if args.similarity is None else f'similarity >= {args.similarity:g}'})")
    policy = calibrate_generation(labelled, template, method=args.method, epsilon=args.epsilon,
                                  delta=(0.05 if args.delta is None else args.delta) if args.method == "ltt" else None,
                                  target_deferral_rate=args.target_deferral_rate)
    out = save_llm_policy(args.edge_llm, policy)
    guarantee = policy.guarantee or {}
    print(f"method {guarantee.get('method')}: {guarantee.get('statement')}")
    print(f"threshold {policy.threshold:.6g} on {policy.signal} after {policy.min_tokens} tokens; "
          f"deferral rate on the prompts {guarantee.get('deferral_rate', 0):.4f}")
    print(f"wrote {out}")
    return 0
