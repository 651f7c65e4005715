"""`edgecascade calibrate`: choose an edge bundle's deferral threshold from held-out predictions
and write the policy file, or refuse when the data cannot certify one."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError, InvalidInputError
from shared.model_card import POLICY_FILE, load_card
from shared.policy import PolicyFile
from shared.signals import SIGNAL_NAMES, confidence_scores

PREDICTIONS_FORMAT = """\
predictions file (.npz, e.g. written with numpy.savez):
  edge_probs  float [N, C]  the edge model's softmax probabilities on held-out examples,
                            C = number of labels in the bundle's model.json, in that order
  cloud_pred  int   [N]     the cloud model's predicted label index for the same examples
  gold        int   [N]     optional: true label index, only used to print accuracies

The loss is "accepted by the edge and edge label != cloud label", so no gold labels are
needed. ltt certifies P(accuracy drop vs cloud > epsilon) <= delta; crc certifies
E[drop] <= epsilon; rate only meets a cloud budget (--target-deferral-rate) with no
accuracy guarantee. When certification fails nothing is written and the exit code is 2.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="choose the deferral threshold from held-out predictions and write policy.json",
        description="Choose an edge bundle's deferral threshold from held-out predictions of the "
        "edge and cloud models, and write policy.json with what was certified.",
        epilog=PREDICTIONS_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--predictions", required=True, type=Path, metavar="FILE", help="held-out predictions (.npz, see below)")
    parser.add_argument("--bundle", required=True, type=Path, metavar="EDGE_BUNDLE_DIR", help="edge model bundle (its model.json names the model and labels)")
    parser.add_argument("--method", choices=("ltt", "crc", "rate"), default="ltt", help="ltt: Learn then Test (default); crc: conformal risk control; rate: fixed deferral rate")
    parser.add_argument("--epsilon", type=float, default=0.01, help="largest accuracy drop vs cloud allowed (ltt, crc; default 0.01)")
    parser.add_argument("--delta", type=float, default=0.05, help="allowed probability that the drop exceeds epsilon (ltt; default 0.05)")
    parser.add_argument("--target-deferral-rate", type=float, default=None, metavar="R", help="largest share sent to the cloud (method rate, required there)")
    parser.add_argument("--signal", choices=SIGNAL_NAMES, default="max_prob", help="confidence signal to threshold (default max_prob)")
    parser.add_argument("--out", type=Path, default=None, metavar="POLICY_JSON", help="where to write the policy (default: EDGE_BUNDLE_DIR/policy.json)")
    parser.set_defaults(func=run)


def load_predictions(path: Path, num_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read and check a predictions .npz: (edge_probs [N, C], cloud_pred [N], gold [N] or None)."""
    if path.is_file() and not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            what = "a single .npy array" if f.read(6) == b"\x93NUMPY" else "not a zip archive"
        raise ConfigError(f"predictions file {path} is not a predictions .npz ({what}); "
                          "write one with numpy.savez(path, edge_probs=..., cloud_pred=...)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise ConfigError(f"predictions file {path} not found") from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"predictions file {path} is not a readable .npz: {exc}") from None
    missing = [key for key in ("edge_probs", "cloud_pred") if key not in arrays]
    if missing:
        raise ConfigError(f"predictions file {path} lacks {', '.join(missing)} (has: {', '.join(sorted(arrays)) or 'nothing'})")
    probs = arrays["edge_probs"]
    if probs.ndim != 2 or not np.issubdtype(probs.dtype, np.floating):
        raise ConfigError(f"{path}: edge_probs must be a float [N, C] array, got {probs.dtype} {probs.shape}")
    if probs.shape[1] != num_labels:
        raise ConfigError(f"{path}: edge_probs has {probs.shape[1]} classes but the bundle's model has {num_labels} labels")
    if not np.all(np.isfinite(probs)):
        raise ConfigError(f"{path}: edge_probs contains non-finite values")
    n = probs.shape[0]
    labels: dict[str, Any] = {}
    for key in ("cloud_pred", "gold"):
        if key not in arrays:
            continue
        values = arrays[key]
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
            raise ConfigError(f"{path}: {key} must be an integer [{n}] array, got {values.dtype} {values.shape}")
        if n and (values.min() < 0 or values.max() >= num_labels):
            raise ConfigError(f"{path}: {key} holds label indices outside [0, {num_labels})")
        labels[key] = values.astype(np.int64)
    if n == 0:
        raise ConfigError(f"{path}: no examples")
    return probs, labels["cloud_pred"], labels.get("gold")


def run(args: argparse.Namespace) -> int:
    # Imported here: scipy is a cloud/dev dependency, and other subcommands run on edge boards.
    from edgecascade.offline.calibration import calibrated_policy
    from edgecascade.offline.cascade_metrics import cascade_at_threshold, endpoint_accuracies

    if args.method == "rate" and args.target_deferral_rate is None:
        raise InvalidInputError("--method rate needs --target-deferral-rate")
    if args.method != "rate" and args.target_deferral_rate is not None:
        raise InvalidInputError("--target-deferral-rate only applies to --method rate")

    from edgecascade.output_paths import prepare_output_dir

    card = load_card(args.bundle)
    probs, cloud_pred, gold = load_predictions(args.predictions, len(card.labels))
    edge_pred = probs.argmax(axis=1)
    spec, result = calibrated_policy(
        PolicyFile.for_card(card, signal=args.signal, threshold=0.0),
        probs,
        cloud_pred,
        method=args.method,
        epsilon=args.epsilon,
        delta=args.delta if args.method == "ltt" else None,
        target_deferral_rate=args.target_deferral_rate,
        predictions=str(args.predictions),
    )
    guarantee = spec.guarantee
    scores = confidence_scores(probs, args.signal)
    out = args.out if args.out is not None else args.bundle / POLICY_FILE
    prepare_output_dir(out.parent, "--out")
    out.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")

    print(f"method {result.method}: {guarantee['statement']}")
    print(f"threshold {result.threshold:.6g} on {args.signal} (accept when score >= threshold)")
    print(
        f"calibration set: n={result.n}, deferral rate {result.deferral_rate:.4f}, "
        f"empirical risk {result.empirical_risk:.4f}"
    )
    if gold is not None:
        edge_acc, cloud_acc, _ = endpoint_accuracies(edge_pred, cloud_pred, gold)
        cascade = cascade_at_threshold(scores, edge_pred, cloud_pred, result.threshold, gold)
        print(
            f"accuracy on the calibration set: edge {edge_acc:.4f}, cloud {cloud_acc:.4f}, "
            f"cascade {cascade.accuracy:.4f} (in-sample, optimistic)"
        )
    print(f"wrote {out}")
    return 0
