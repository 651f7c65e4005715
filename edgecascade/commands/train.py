"""`edgecascade train`: build the edge (INT8 ONNX) and cloud (MiniLM + head) text bundles from CSVs."""

from __future__ import annotations

import argparse
from pathlib import Path

CSV_FORMAT = """\
CSV format: a header row with a `text` column and a label column named `category` or `label`
(`category` wins when both exist); one example per row, no empty texts or labels. Labels in
the eval CSV must all occur in the training CSV. Errors name the row (1 = first data row).

Writes OUT/edge (model.json, model.onnx, policy.json), OUT/cloud (model.json,
head.safetensors), OUT/build.json and, with an eval set, OUT/eval_predictions.npz for
`edgecascade calibrate --predictions OUT/eval_predictions.npz --bundle OUT/edge`.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the edge and cloud text models from labelled CSVs",
        description="Train the edge model (hashed n-grams, logistic regression, INT8 ONNX) and the cloud "
        "model (all-MiniLM-L6-v2 embeddings, logistic-regression head) and write both bundles.",
        epilog=CSV_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, metavar="CSV_TRAIN", help="training CSV")
    source.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="directory with train.csv and test.csv (test.csv becomes the eval set); "
                        "default: $EDGECASCADE_DATA_DIR or ../shared/data/banking77 next to the repository")
    parser.add_argument("--eval", type=Path, metavar="CSV", help="eval CSV (accuracies, eval predictions, certified policy)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory for edge/ and cloud/")
    parser.add_argument("--name", default=None, help="model name prefix (default: the data directory's name)")
    parser.add_argument("--version", type=int, default=1, help="version written to both model cards (default 1)")
    parser.add_argument("--num-features", type=int, default=None, metavar="F",
                        help="hash buckets of the edge featurizer; the edge model holds F x labels INT8 weights "
                        "(default: the most, up to 65536, that fit --edge-max-mb)")
    parser.add_argument("--edge-max-mb", type=float, default=6.0, metavar="MB",
                        help="size budget of the edge model file; sets the buckets from the label count (default 6)")
    parser.add_argument("--oos-label", default=None, metavar="LABEL",
                        help="label of out-of-scope examples (default: out_of_scope or oos when the data has one); the "
                        "edge card declares it and eval_predictions.npz marks those examples for calibrate --abstain-cost")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache (default: $EDGECASCADE_CACHE_DIR or ~/.cache/edgecascade)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgecascade.offline.text_build import build_text_models
    from edgecascade.offline.text_data import data_files, find_out_of_scope_label, read_labelled_csv
    from edgecascade.output_paths import prepare_output_dir
    from shared.errors import InvalidInputError

    if args.version < 1:
        raise InvalidInputError(f"--version must be >= 1, got {args.version}")
    if not args.edge_max_mb > 0:
        raise InvalidInputError(f"--edge-max-mb must be positive, got {args.edge_max_mb}")
    if args.data is not None:
        train_path, eval_path = args.data, args.eval
    else:
        train_path, test_path = data_files(args.data_dir)
        eval_path = args.eval if args.eval is not None else test_path
    name = args.name or train_path.resolve().parent.name or "text"
    prepare_output_dir(args.out, "--out")  # before hours of training, not after
    train = read_labelled_csv(train_path)
    eval_set = read_labelled_csv(eval_path) if eval_path is not None else None
    oos_label = find_out_of_scope_label(train, *([eval_set] if eval_set is not None else []), named=args.oos_label)
    facts = build_text_models(train, args.out, eval_set=eval_set, name=name, version=args.version,
                              cache_dir=args.cache_dir, progress_bars=not args.no_progress,
                              featurizer_options={} if args.num_features is None else {"num_features": args.num_features},
                              edge_max_bytes=int(args.edge_max_mb * 1e6), out_of_scope_label=oos_label)
    print(summary(facts, Path(args.out)))
    return 0


def summary(facts: dict, out: Path) -> str:
    """What a user wants after a build: sizes, accuracies, the policy, where everything went."""
    mb = 1024 * 1024
    lines = [
        f"trained {facts['name']} v{facts['version']} on {facts['train_size']} texts, {facts['num_labels']} labels "
        f"in {facts['build_s']['total_s']:.0f} s",
        f"  edge  {out / 'edge'}  ({facts['edge_size_bytes'] / mb:.1f} MB"
        + (f": {facts['edge_buckets']} hash buckets x {facts['num_labels']} labels, budget "
           f"{facts['edge_max_bytes'] / 1e6:g} MB" if "edge_buckets" in facts else "") + ")",
        f"  cloud {out / 'cloud'}  ({facts['cloud_size_bytes'] / mb:.1f} MB)",
    ]
    evaluated = facts.get("eval")
    if evaluated:
        lines.append(f"  eval ({evaluated['size']} texts): edge accuracy {evaluated['edge_accuracy']:.4f}, "
                     f"cloud {evaluated['cloud_accuracy']:.4f}, agreement {evaluated['agreement']:.4f}")
    if facts.get("out_of_scope_label"):
        lines.append(f"  out-of-scope label {facts['out_of_scope_label']!r}: declared by the edge model; "
                     "calibrate --abstain-cost sets the abstain thresholds")
    policy = facts["policy"]
    certified = policy.get("method") not in (None, "none")
    lines.append(f"  policy: accept {policy['signal']} >= {policy['threshold']:.4f}"
                 + ("" if certified else " (provisional: run `edgecascade calibrate`)"))
    if evaluated:
        lines.append(f"  next: edgecascade calibrate --predictions {out / 'eval_predictions.npz'} --bundle {out / 'edge'}")
    lines.append(f"  build record: {out / 'build.json'}")
    return "\n".join(lines)
