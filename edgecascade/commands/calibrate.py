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
from shared.signals import SIGNAL_NAMES, confidence_scores, score_name

PREDICTIONS_FORMAT = """\
predictions file (.npz, e.g. written with numpy.savez):
  edge_probs  float [N, C]  the edge model's softmax probabilities on held-out examples,
                            C = number of labels in the bundle's model.json, in that order
  cloud_pred  int   [N]     the cloud model's predicted label index for the same examples
  gold        int   [N]     optional: true label index, only used to print accuracies
                            (-1 for an out-of-scope example whose label is not a class)
  out_of_scope bool [N]     optional: marks out-of-scope examples (needed by --abstain-cost)
  cloud_probs float [N, C]  optional: the cloud's probabilities (lets --abstain-cost calibrate
                            the cloud side's abstain threshold too)

The loss is "accepted by the edge and edge label != cloud label", so no gold labels are
needed. ltt certifies P(accuracy drop vs cloud > epsilon) <= delta; crc certifies
E[drop] <= epsilon; rate only meets a cloud budget (--target-deferral-rate) with no
accuracy guarantee. When certification fails nothing is written and the exit code is 2.
The threshold is on the signal's score, higher = more confident: max_prob, margin, or
-entropy (negated entropy) for --signal entropy.

--abstain-cost C then calibrates the out-of-scope abstain thresholds at that deferral
threshold: the highest out-of-scope recall whose in-scope accuracy is at most C below the
cascade's without abstaining, on these examples (empirical; needs gold and out_of_scope).
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
    parser.add_argument("--delta", type=float, default=None, help="allowed probability that the drop exceeds epsilon (ltt only; default 0.05)")
    parser.add_argument("--target-deferral-rate", type=float, default=None, metavar="R", help="largest share sent to the cloud (method rate, required there)")
    parser.add_argument("--signal", choices=SIGNAL_NAMES, default="max_prob", help="confidence signal to threshold (default max_prob)")
    parser.add_argument("--abstain-cost", type=float, default=None, metavar="C",
                        help="also calibrate out-of-scope abstain thresholds, giving up at most C in-scope accuracy "
                        "(e.g. 0.01; needs out_of_scope and gold in the predictions)")
    parser.add_argument("--out", type=Path, default=None, metavar="POLICY_JSON", help="where to write the policy (default: EDGE_BUNDLE_DIR/policy.json)")
    parser.set_defaults(func=run)


def load_predictions(path: Path, num_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read and check a predictions .npz: (edge_probs [N, C], cloud_pred [N], gold [N] or None)."""
    arrays = _load_checked(path, num_labels)
    return arrays["edge_probs"], arrays["cloud_pred"], arrays.get("gold")


def _load_checked(path: Path, num_labels: int) -> dict[str, np.ndarray]:
    """Every array of a predictions file, checked (see PREDICTIONS_FORMAT)."""
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
    labels: dict[str, Any] = {"edge_probs": probs}
    oos = arrays.get("out_of_scope")
    if oos is not None:
        if oos.shape != (n,) or oos.dtype != np.bool_:
            raise ConfigError(f"{path}: out_of_scope must be a bool [{n}] array, got {oos.dtype} {oos.shape}")
        labels["out_of_scope"] = oos
    for key in ("cloud_pred", "gold"):
        if key not in arrays:
            continue
        values = arrays[key]
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
            raise ConfigError(f"{path}: {key} must be an integer [{n}] array, got {values.dtype} {values.shape}")
        lowest = -1 if key == "gold" and oos is not None else 0   # -1: an out-of-scope example's gold
        if n and (values.min() < lowest or values.max() >= num_labels):
            raise ConfigError(f"{path}: {key} holds label indices outside [{lowest}, {num_labels})")
        if lowest == -1 and np.any((values == -1) & ~oos):
            raise ConfigError(f"{path}: gold is -1 for an example that out_of_scope does not mark")
        labels[key] = values.astype(np.int64)
    if "cloud_probs" in arrays:
        cloud_probs = arrays["cloud_probs"]
        if cloud_probs.shape != probs.shape or not np.issubdtype(cloud_probs.dtype, np.floating):
            raise ConfigError(f"{path}: cloud_probs must be a float {list(probs.shape)} array, got {cloud_probs.dtype} {cloud_probs.shape}")
        if not np.all(np.isfinite(cloud_probs)):
            raise ConfigError(f"{path}: cloud_probs contains non-finite values")
        labels["cloud_probs"] = cloud_probs
    if n == 0:
        raise ConfigError(f"{path}: no examples")
    return labels


def run(args: argparse.Namespace) -> int:
    # Imported here: scipy is a cloud/dev dependency, and other subcommands run on edge boards.
    from edgecascade.offline.calibration import calibrate
    from edgecascade.offline.cascade_metrics import cascade_at_threshold, endpoint_accuracies

    if args.method == "rate" and args.target_deferral_rate is None:
        raise InvalidInputError("--method rate needs --target-deferral-rate")
    if args.method != "rate" and args.target_deferral_rate is not None:
        raise InvalidInputError("--target-deferral-rate only applies to --method rate")
    if args.method != "ltt" and args.delta is not None:
        raise InvalidInputError(f"--delta only applies to --method ltt: {args.method} has no delta "
                                + ("(conformal risk control bounds the expected drop, E[drop] <= epsilon)"
                                   if args.method == "crc" else "(it meets a deferral rate, with no accuracy guarantee)"))

    from edgecascade.output_paths import prepare_output_dir

    card = load_card(args.bundle)
    arrays = _load_checked(args.predictions, len(card.labels))
    probs, cloud_pred, gold = arrays["edge_probs"], arrays["cloud_pred"], arrays.get("gold")
    if args.abstain_cost is not None and ("out_of_scope" not in arrays or gold is None):
        raise InvalidInputError(f"--abstain-cost needs out_of_scope and gold in {args.predictions} "
                                f"(it has {', '.join(sorted(arrays))})")
    edge_pred = probs.argmax(axis=1)
    scores = confidence_scores(probs, args.signal)
    result = calibrate(
        scores,
        edge_pred,
        cloud_pred,
        method=args.method,
        epsilon=args.epsilon,
        delta=(0.05 if args.delta is None else args.delta) if args.method == "ltt" else None,
        target_deferral_rate=args.target_deferral_rate,
    )
    abstain = None
    if args.abstain_cost is not None:
        abstain = _calibrate_abstain(args, card, arrays, result.threshold)
    guarantee = result.guarantee()
    guarantee["signal"] = args.signal
    guarantee["predictions"] = str(args.predictions)
    spec = PolicyFile(
        model_name=card.name,
        model_version=card.version,
        labels=card.labels,
        signal=args.signal,
        threshold=result.threshold,
        guarantee=guarantee,
    )
    if abstain is not None:
        spec = spec.model_copy(update={"abstain_threshold": abstain.abstain_threshold,
                                        "cloud_abstain_threshold": abstain.cloud_abstain_threshold,
                                        "abstain_guarantee": abstain.guarantee()})
    out = args.out if args.out is not None else args.bundle / POLICY_FILE
    prepare_output_dir(out.parent, "--out")
    out.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")

    print(f"method {result.method}: {guarantee['statement']}")
    print(f"threshold {result.threshold:.6g} on {score_name(args.signal)} (accept when score >= threshold)")
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
    if abstain is not None:
        _print_abstain(abstain, args.signal)
    print(f"wrote {out}")
    return 0


def _calibrate_abstain(args: argparse.Namespace, card, arrays: dict[str, np.ndarray], threshold: float):
    from edgecascade.offline.out_of_scope import calibrate_abstain

    probs = arrays["edge_probs"]
    cloud_probs = arrays.get("cloud_probs")
    cloud_scores = confidence_scores(cloud_probs, args.signal) if cloud_probs is not None else np.zeros(len(probs))
    oos_class = card.abstain_label[0]
    return calibrate_abstain(confidence_scores(probs, args.signal), probs.argmax(axis=1), cloud_scores,
                             arrays["cloud_pred"], arrays["gold"], arrays["out_of_scope"], threshold=threshold,
                             max_in_scope_cost=args.abstain_cost, oos_class=oos_class, cloud=cloud_probs is not None)


def _print_abstain(abstain, signal: str) -> None:
    def shown(value):
        return "none" if value is None else f"{value:.6g}"

    base, after = abstain.baseline, abstain.calibrated
    print(f"abstain: edge below {shown(abstain.abstain_threshold)}, cloud below {shown(abstain.cloud_abstain_threshold)} "
          f"on {score_name(signal)}")
    print(f"  on {abstain.n} examples ({abstain.n_out_of_scope} out of scope): in-scope accuracy "
          f"{base.in_scope_accuracy:.4f} -> {after.in_scope_accuracy:.4f} (allowed cost {abstain.max_in_scope_cost:g}), "
          f"out-of-scope recall {base.out_of_scope_recall:.4f} -> {after.out_of_scope_recall:.4f}, "
          f"deferral rate {base.deferral_rate:.4f} -> {after.deferral_rate:.4f} (empirical, in-sample)")
