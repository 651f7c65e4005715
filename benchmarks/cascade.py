"""`edgecascade bench cascade`: the text cascade on an intent data set (BANKING77 by default),
offline and (with e2e) live.

The data set is a folder with train.csv and test.csv (`--data-dir`, default BANKING77); its name
(the folder's, or `--name`) names the result, `cascade_<name>.json` and `.png`, so a run on
another data set never replaces BANKING77's committed result. The targets in `check_targets`
are BANKING77's and are checked only on BANKING77. `--models DIR` measures a pair that
`edgecascade train --out DIR` built instead of building one.

Out of scope: when the test set has an out-of-scope label (`out_of_scope` or `oos`, or
`--oos-label`), the numbers above are over the in-scope queries, and `out_of_scope` reports
mixed traffic on the held-out half for edge only, cloud only and the cascade, each without and
with an abstain threshold calibrated on the other half at `--abstain-cost` in-scope accuracy:
in-scope accuracy, out-of-scope recall and the share sent to the cloud. The live run then uses
the cascade's abstain thresholds too.

Offline, on the whole test set, with the bundles as served (`shared.model_loader.load_model`, `cloud_router.model_runtimes`):
edge-only, cloud-only and oracle accuracy, the deferral-accuracy curve (least confident
first, max_prob), APGR, CPT(50/80/95), and the deferral needed to match the cloud.

Calibrated point: Learn then Test at epsilon 0.01, delta 0.05 on a random half of the test
set (cloud answers as labels), accuracy and deferral measured on the other half. The
guarantee is checked over 200 such re-splits (`edgecascade.offline.calibration.guarantee_violation_rate`).

Cost, measured in the same run: each model's file size, and its single-query latency
(one text per `predict` call, featurizer/tokenizer included, one thread each).

With e2e, the held-out half also goes through SDK -> edge agent -> cloud router on loopback
with the calibrated policy, and the live accuracy, routes and latency per route are reported.

Quick mode (smoke tests): 12 intents, 25 training texts each, their test texts, a 4096-bucket
edge model, epsilon 0.05 (a half of 480 examples cannot certify 0.01), fewer timing calls.
Its numbers say nothing about the targets, which are checked only on full runs.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.common import RESULTS_DIR

log = logging.getLogger(__name__)

BANKING77 = "banking77"
#: Out-of-scope reference on CLINC150 (Larson et al., EMNLP 2019): BERT with a confidence threshold.
OOS_REFERENCE = {"source": "Larson et al. 2019, CLINC150, BERT with a confidence threshold",
                 "out_of_scope_recall": 0.52, "in_scope_accuracy_cost_at_most": 0.01}
ABSTAIN_COST = 0.01
SIGNAL = "max_prob"
EPSILON, DELTA = 0.01, 0.05
QUICK_EPSILON = 0.05
N_SPLITS = 200
CALIB_FRACTION = 0.5
SPLIT_SEED = 0
CURVE_POINTS = 201
QUICK_CLASSES, QUICK_TRAIN_PER_CLASS, QUICK_NUM_FEATURES = 12, 25, 4096


def dataset_name(data_dir: Optional[str | Path], name: Optional[str] = None) -> str:
    """`name`, else the data folder's name (BANKING77's by default)."""
    from edgecascade.offline.text_data import default_data_dir

    if name:
        return name
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    return folder.resolve().name or "data"


def result_paths(out_dir: Path, name: str, quick: bool) -> tuple[Path, Path]:
    """(JSON, PNG) of a run: cascade_<name>[_quick].json / .png."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "data"
    stem = f"cascade_{slug}{'_quick' if quick else ''}"
    return out_dir / f"{stem}.json", out_dir / f"{stem}.png"


def _refuse_other_data(json_path: Path, name: str, fingerprint: str) -> None:
    """Never replace a result of another data set that happens to have the same name."""
    from shared.errors import ConfigError

    if not json_path.is_file():
        return
    try:
        old = json.loads(json_path.read_text()).get("data", {})
    except (OSError, ValueError, AttributeError):
        return
    old_fingerprint = old.get("fingerprint")
    if old_fingerprint is None:  # results from before fingerprints: compare the data folder's name
        old_source = old.get("test")
        same = old_source is None or Path(old_source).parent.name == name
    else:
        same = old_fingerprint == fingerprint
    if not same:
        raise ConfigError(f"{json_path} holds the result of another data set ({old.get('test')}); "
                          "give this one its own --name, or another --out")


def run_cascade_bench(data_dir: Optional[str | Path], out_dir: Optional[str | Path], e2e: bool = False,
                      quick: bool = False, *, name: Optional[str] = None, models_dir: Optional[str | Path] = None,
                      oos_label: Optional[str] = None, abstain_cost: float = ABSTAIN_COST,
                      epsilon: Optional[float] = None, progress: bool = True) -> dict[str, Any]:
    """Run the benchmark, write cascade_<name>.json and .png under `out_dir`, return the result."""
    from edgecascade.offline.text_data import data_files, find_out_of_scope_label, read_labelled_csv
    from edgecascade.offline.text_models import data_fingerprint
    from edgecascade.plots import plot_deferral_curve

    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    name = dataset_name(data_dir, name)
    json_path, png_path = result_paths(out_dir, name, quick)
    train_path, test_path = data_files(data_dir)
    fingerprint = data_fingerprint(train_path, test_path)
    _refuse_other_data(json_path, name, fingerprint)
    found = find_out_of_scope_label(read_labelled_csv(test_path), named=oos_label)
    with tempfile.TemporaryDirectory(prefix="edgecascade-bench-cascade-") as tmp:
        work = Path(tmp)
        if models_dir is not None:
            edge_dir, cloud_dir, labels, test, build_facts = _built_pair(Path(models_dir), test_path)
        elif quick:
            edge_dir, cloud_dir, labels, test, build_facts = _quick_pair(data_dir, work, found)
        else:
            from edgecascade.offline.text_models import ensure_text_models

            pair = ensure_text_models(data_dir, progress_bars=progress)
            edge_dir, cloud_dir, labels, test, build_facts = pair.edge_dir, pair.cloud_dir, pair.labels, pair.test_set, pair.info
        gold = test.label_ids(labels, found)
        oos = test.out_of_scope(found)
        oos_class = labels.index(found) if found in labels else -1
        result = measure(edge_dir, cloud_dir, labels, test.texts, gold,
                         epsilon=epsilon or (QUICK_EPSILON if quick else EPSILON), quick=quick, out_of_scope=oos,
                         oos_class=oos_class, abstain_cost=abstain_cost)
        result["data"] = {"name": name, "test": test.source, "test_size": len(test), "num_labels": len(labels),
                          "train_size": build_facts.get("train_size"), "quick": quick, "fingerprint": fingerprint,
                          "out_of_scope_label": found, "out_of_scope_test_size": int(oos.sum()),
                          "models": str(models_dir) if models_dir is not None else None}
        result["build_s"] = build_facts.get("build_s")
        if e2e:
            if oos.any():
                mixed = result["out_of_scope"]
                threshold = mixed["deferral_threshold"]
                policy = {"threshold": 1.1 if threshold is None else threshold,  # uncertified: defer all
                          "abstain_threshold": mixed["cascade_abstain"]["abstain_threshold"],
                          "cloud_abstain_threshold": mixed["cascade_abstain"]["cloud_abstain_threshold"]}
            else:
                calibrated = result["calibrated"]
                policy = {"threshold": calibrated["threshold"] if calibrated["certified"] else 1.1}  # uncertified: defer all
            result["e2e"] = live_cascade(edge_dir, cloud_dir, labels, test.texts, gold, oos, policy, work,
                                         progress=progress and not quick)
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                         "cpus": _cpu_count()}
    if quick or name != BANKING77 or len(labels) != 77 or oos.any() or epsilon not in (None, EPSILON):
        result["targets"] = {}
        result["targets_note"] = "the targets are BANKING77's, checked only on full runs on BANKING77"
    else:
        result["targets"] = check_targets(result)

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    in_scope = " (in scope)" if oos.any() else ""
    points = {
        "edge only": (0.0, result["edge_only_accuracy"]),
        "cloud only": (1.0, result["cloud_only_accuracy"]),
        "oracle": (result["oracle_deferral_rate"], result["oracle_accuracy"]),
        "calibrated (held-out half)": (result["calibrated"]["deferral_rate"], result["calibrated"]["accuracy"]),
    }
    if oos.any():
        abstaining = result["out_of_scope"]["cascade_abstain"]
        points["cascade + abstain, mixed traffic: cloud share, in-scope acc."] = (abstaining["deferral_rate"],
                                                                                   abstaining["in_scope_accuracy"])
    if e2e:
        points["live e2e (held-out half)"] = (result["e2e"]["deferral_rate"], result["e2e"]["accuracy"])
    plot_deferral_curve(result["curve"], points, png_path,
                        title=f"{name}{in_scope}: n-gram edge -> MiniLM cloud{' (quick)' if quick else ''}")
    result["files"] = {"json": str(json_path), "png": str(png_path)}
    return result


def _built_pair(models_dir: Path, test_path: Path):
    """A pair `edgecascade train --out models_dir` wrote, and the test set to measure it on."""
    from edgecascade.offline.text_build import BUILD_INFO_FILE
    from edgecascade.offline.text_data import read_labelled_csv
    from shared.errors import ConfigError
    from shared.model_card import load_card

    edge_dir, cloud_dir = models_dir / "edge", models_dir / "cloud"
    for folder in (edge_dir, cloud_dir):
        if not (folder / "model.json").is_file():
            raise ConfigError(f"--models {models_dir}: no {folder.name}/model.json; expected the output of "
                              "`edgecascade train --out DIR`")
    info_path = models_dir / BUILD_INFO_FILE
    facts = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return edge_dir, cloud_dir, load_card(edge_dir).labels, read_labelled_csv(test_path), facts


def measure(edge_dir: Path, cloud_dir: Path, labels: Sequence[str], texts: list[str], gold: np.ndarray, *,
            epsilon: float = EPSILON, delta: float = DELTA, quick: bool = False,
            out_of_scope: Optional[np.ndarray] = None, oos_class: int = -1,
            abstain_cost: float = ABSTAIN_COST) -> dict[str, Any]:
    """Everything but the live run; see the module docstring. `out_of_scope` marks out-of-scope
    queries (their gold is ignored): the usual numbers are then over the others."""
    from cloud_router.model_runtimes import load_cloud_model
    from edgecascade.offline.calibration import calibrate_ltt, calibration_masks, guarantee_violation_rate
    from edgecascade.offline.cascade_metrics import cascade_at_threshold, cascade_report
    from shared.errors import CalibrationError
    from shared.model_loader import load_model
    from shared.signals import confidence_scores

    edge = load_model(edge_dir, edge=True)
    edge.load()
    cloud = load_cloud_model(cloud_dir)
    cloud.load()
    _check_labels(edge, cloud, labels)

    started = time.perf_counter()
    all_edge_probs = _predict_all(edge, texts)
    edge_batch_s = time.perf_counter() - started
    started = time.perf_counter()
    all_cloud_probs = _predict_all(cloud, texts)
    cloud_batch_s = time.perf_counter() - started
    oos = np.zeros(len(texts), dtype=bool) if out_of_scope is None else np.asarray(out_of_scope, dtype=bool)
    all_gold = np.asarray(gold)
    edge_probs, cloud_probs, gold = all_edge_probs[~oos], all_cloud_probs[~oos], all_gold[~oos]
    edge_pred, cloud_pred = edge_probs.argmax(1), cloud_probs.argmax(1)
    scores = confidence_scores(edge_probs, SIGNAL)

    report = cascade_report(scores, edge_pred, cloud_pred, gold)
    curve = report.curve
    match = np.flatnonzero(curve[:, 1] >= report.cloud_accuracy - 1e-12)
    n = len(gold)

    calib_size = int(round(CALIB_FRACTION * n))
    in_calib = calibration_masks(n, 1, calib_size, SPLIT_SEED)[0]
    held_out = ~in_calib
    try:
        fit = calibrate_ltt(scores[in_calib], edge_pred[in_calib], cloud_pred[in_calib], epsilon, delta)
        outcome = cascade_at_threshold(scores[held_out], edge_pred[held_out], cloud_pred[held_out], fit.threshold, gold[held_out])
        calibrated = {"certified": True, "threshold": fit.threshold, "deferral_rate": outcome.deferral_rate,
                      "accuracy": outcome.accuracy, "calib_deferral_rate": fit.deferral_rate, "p_value": fit.p_value}
    except CalibrationError as exc:  # defer everything
        calibrated = {"certified": False, "reason": str(exc), "threshold": None, "deferral_rate": 1.0,
                      "accuracy": float((cloud_pred[held_out] == gold[held_out]).mean())}
    calibrated.update(
        epsilon=epsilon, delta=delta, signal=SIGNAL, calib_size=int(in_calib.sum()), test_size=int(held_out.sum()),
        edge_share=1.0 - calibrated["deferral_rate"],
        cloud_accuracy_held_out=float((cloud_pred[held_out] == gold[held_out]).mean()),
    )
    try:
        violations = guarantee_violation_rate(scores, edge_pred, cloud_pred, gold, epsilon=epsilon, delta=delta,
                                              n_splits=N_SPLITS, calib_fraction=CALIB_FRACTION, seed=SPLIT_SEED)
        guarantee = {"guarantee_violation_rate": violations.violation_rate, "guarantee": violations.summary()}
    except CalibrationError as exc:  # a small data set: its halves cannot certify epsilon
        guarantee = {"guarantee_violation_rate": None, "guarantee": {"skipped": str(exc)}}

    mixed = (out_of_scope_report(all_edge_probs, all_cloud_probs, all_gold, oos, oos_class=oos_class, epsilon=epsilon,
                                 delta=delta, abstain_cost=abstain_cost) if oos.any() else None)
    edge_ms = single_query_ms(edge, texts, count=200 if quick else 1000)
    cloud_ms = single_query_ms(cloud, texts, count=20 if quick else 300)
    edge_bytes = (edge_dir / edge.card.file).stat().st_size
    cloud_bytes = cloud.size_bytes()
    rows = np.unique(np.round(np.linspace(0, n, CURVE_POINTS)).astype(int))
    wrong_edge_right_cloud = (edge_pred != gold) & (cloud_pred == gold)
    return {
        "edge_only_accuracy": report.edge_accuracy,
        "cloud_only_accuracy": report.cloud_accuracy,
        "oracle_accuracy": report.oracle_accuracy,
        "oracle_deferral_rate": float(wrong_edge_right_cloud.mean()),
        "agreement": float((edge_pred == cloud_pred).mean()),
        "signal": SIGNAL,
        "curve": [[round(float(rate), 5), round(float(acc), 5)] for rate, acc in curve[rows]],
        "deferral_to_match_cloud": float(curve[match[0], 0]) if match.size else None,
        "apgr": report.apgr,
        "cpt": {str(p): rate for p, rate in report.cpt.items()},
        "calibrated": calibrated,
        **guarantee,
        "edge_ms_per_query": edge_ms,
        "cloud_ms_per_query": cloud_ms,
        "edge_batch_ms_per_text": 1000.0 * edge_batch_s / len(texts),
        "cloud_batch_ms_per_text": 1000.0 * cloud_batch_s / len(texts),
        "edge_threads": int(edge.card.options.get("intra_op_threads", 1)),
        "cloud_threads": cloud.card.options.get("threads"),
        "edge_model_bytes": edge_bytes,
        "cloud_model_bytes": cloud_bytes,
        "edge_model": {"name": edge.name, "file": edge.card.file, "runtime": edge.card.runtime},
        "cloud_model": {"name": cloud.name, "file": cloud.card.file, "runtime": cloud.card.runtime,
                        "size_counts": "encoder safetensors + head"},
        **({"in_scope_only": True, "out_of_scope": mixed} if mixed is not None else {}),
    }


def out_of_scope_report(edge_probs: np.ndarray, cloud_probs: np.ndarray, gold: np.ndarray, oos: np.ndarray, *,
                        oos_class: int = -1, epsilon: float = EPSILON, delta: float = DELTA,
                        abstain_cost: float = ABSTAIN_COST) -> dict[str, Any]:
    """Mixed traffic (in-scope and out-of-scope queries) on the held-out half, for edge only, cloud
    only and the cascade, each without and with an abstain threshold calibrated on the other half."""
    from edgecascade.offline.calibration import calibrate_ltt, calibration_masks
    from edgecascade.offline.out_of_scope import calibrate_abstain, mixed_traffic
    from shared.errors import CalibrationError
    from shared.signals import confidence_scores

    n = len(gold)
    edge_scores, cloud_scores = confidence_scores(edge_probs, SIGNAL), confidence_scores(cloud_probs, SIGNAL)
    edge_pred, cloud_pred = edge_probs.argmax(1), cloud_probs.argmax(1)
    calib = calibration_masks(n, 1, int(round(CALIB_FRACTION * n)), SPLIT_SEED)[0]
    held = ~calib
    try:  # the deferral threshold on mixed traffic, as `edgecascade calibrate` would pick it
        threshold = calibrate_ltt(edge_scores[calib], edge_pred[calib], cloud_pred[calib], epsilon, delta).threshold
    except CalibrationError:
        threshold = float("inf")  # defer everything

    # Each system as (edge scores, edge answers, cloud scores, cloud answers, deferral threshold):
    # edge only is the edge in the cloud's place with nothing deferred to it.
    systems = {
        "edge_only": (edge_scores, edge_pred, edge_scores, edge_pred, float("inf")),
        "cloud_only": (edge_scores, edge_pred, cloud_scores, cloud_pred, float("inf")),
        "cascade": (edge_scores, edge_pred, cloud_scores, cloud_pred, threshold),
    }
    out: dict[str, Any] = {"signal": SIGNAL, "deferral_threshold": threshold if np.isfinite(threshold) else None,
                           "abstain_cost": abstain_cost, "calib_size": int(calib.sum()), "test_size": int(held.sum()),
                           "test_out_of_scope": int(oos[held].sum()), "reference": OOS_REFERENCE}
    for system, (es, ep, cs, cp, t) in systems.items():
        def on(mask, **thresholds):
            return mixed_traffic(es[mask], ep[mask], cs[mask], cp[mask], gold[mask], oos[mask], threshold=t,
                                 oos_class=oos_class, **thresholds)
        plain = on(held).as_dict()
        fit = calibrate_abstain(es[calib], ep[calib], cs[calib], cp[calib], gold[calib], oos[calib], threshold=t,
                                max_in_scope_cost=abstain_cost, oos_class=oos_class, edge=system == "cascade")
        abstaining = on(held, abstain_threshold=fit.abstain_threshold,
                        cloud_abstain_threshold=fit.cloud_abstain_threshold).as_dict()
        abstaining.update(abstain_threshold=fit.abstain_threshold, cloud_abstain_threshold=fit.cloud_abstain_threshold,
                          in_scope_cost=plain["in_scope_accuracy"] - abstaining["in_scope_accuracy"],
                          calib_in_scope_cost=fit.baseline.in_scope_accuracy - fit.calibrated.in_scope_accuracy,
                          calib_out_of_scope_recall=fit.calibrated.out_of_scope_recall)
        if system == "edge_only":  # nothing reaches a cloud
            for row in (plain, abstaining):
                row["deferral_rate"] = row["out_of_scope_deferral_rate"] = 0.0
        if system == "edge_only" and abstaining["abstain_threshold"] is None:
            abstaining["abstain_threshold"] = abstaining.pop("cloud_abstain_threshold")  # the edge's own threshold
        out[system] = plain
        out[f"{system}_abstain"] = abstaining
    best = out["cascade_abstain"]
    out["cascade_abstain_beats_reference"] = bool(
        best["out_of_scope_recall"] > OOS_REFERENCE["out_of_scope_recall"]
        and best["in_scope_cost"] <= OOS_REFERENCE["in_scope_accuracy_cost_at_most"])
    return out


def single_query_ms(model, texts: Sequence[str], *, count: int, warmup: int = 5) -> dict[str, float]:
    """Latency of `model.predict([text])` over `count` texts (cycled): p50, p90, p99, mean in ms."""
    for text in texts[:warmup]:
        model.predict([text])
    samples = []
    for i in range(count):
        text = texts[i % len(texts)]
        started = time.perf_counter()
        model.predict([text])
        samples.append((time.perf_counter() - started) * 1000.0)
    values = np.asarray(samples)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean()), "count": count}


def check_targets(r: dict[str, Any]) -> dict[str, bool]:
    calibrated = r["calibrated"]
    return {
        "edge_only_accuracy >= 0.88": r["edge_only_accuracy"] >= 0.88,
        "cloud_only_accuracy >= 0.92": r["cloud_only_accuracy"] >= 0.92,
        "deferral_to_match_cloud <= 0.35": r["deferral_to_match_cloud"] is not None and r["deferral_to_match_cloud"] <= 0.35,
        "edge_model_bytes <= cloud_model_bytes / 10": r["edge_model_bytes"] <= r["cloud_model_bytes"] / 10,
        "edge p50 ms <= cloud p50 ms / 5": r["edge_ms_per_query"]["p50"] <= r["cloud_ms_per_query"]["p50"] / 5,
        "calibrated edge share >= 0.65": calibrated["certified"] and calibrated["edge_share"] >= 0.65,
        "mean edge share over re-splits >= 0.65": 1.0 - r["guarantee"]["mean_deferral_rate"] >= 0.65,
        "guarantee_violation_rate <= 0.05": r["guarantee_violation_rate"] <= 0.05,
    }


def live_cascade(edge_dir: Path, cloud_dir: Path, labels: Sequence[str], texts: list[str], gold: np.ndarray,
                 out_of_scope: np.ndarray, policy: dict[str, Any], work: Path, *, progress: bool = True) -> dict[str, Any]:
    """The held-out half through SDK -> edge agent -> cloud router, with `policy` (threshold and,
    for data with out-of-scope queries, the abstain thresholds)."""
    from edgecascade.demo import percentile_ms, replay
    from edgecascade.offline.calibration import calibration_masks
    from edgecascade.processes import Daemon
    from shared.model_card import load_card
    from shared.policy import PolicyFile

    routes_known = ("edge", "cloud", "edge_fallback", "abstain")
    n = len(texts)
    held_out = np.flatnonzero(~calibration_masks(n, 1, int(round(CALIB_FRACTION * n)), SPLIT_SEED)[0])
    card = load_card(edge_dir)
    policy_path = work / "policy.json"
    spec = PolicyFile(model_name=card.name, model_version=card.version, labels=card.labels, signal=SIGNAL,
                      guarantee={"method": "bench cascade, calibrated on the other half"}, **policy)
    policy_path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    inputs = [texts[i] for i in held_out]
    with Daemon("cloud", {"model_dirs": [str(cloud_dir)], "max_delay_ms": 2.0}, work, name="cloud") as cloud, \
         Daemon("edge", {"bundle_dir": str(edge_dir), "policy_file": str(policy_path), "cloud_target": cloud.target,
                         "agent_id": "bench-cascade-edge", "default_timeout_ms": 10_000.0}, work, name="edge") as edge:
        started = time.perf_counter()
        results = replay([edge.target], inputs, concurrency=8, timeout_s=20.0, progress=progress)
        wall_s = time.perf_counter() - started
    index = {name: i for i, name in enumerate(labels)}
    answers = np.array([-1 if r.served_by == "abstain" else index.get(r.label_name, -1) for r, _ in results])
    routes = [r.served_by for r, _ in results]
    sent = [r.served_by in ("cloud", "edge_fallback") and r.fallback_reason != "pressure"
            or r.abstain_reason.startswith("cloud_") for r, _ in results]
    latency = {route: [ms for r, ms in results if r.served_by == route] for route in routes_known}
    oos = out_of_scope[held_out]
    correct = (answers == gold[held_out]) & (answers >= 0)
    out = {
        "n": len(inputs),
        "accuracy": float(correct[~oos].mean()),
        "deferral_rate": float(np.mean(sent)),
        "routes": {route: routes.count(route) for route in routes_known},
        "fallback_reasons": dict(Counter(r.fallback_reason for r, _ in results if r.fallback_reason)),
        "abstain_reasons": dict(Counter(r.abstain_reason for r, _ in results if r.abstain_reason)),
        "latency_ms": {route: {"p50": percentile_ms(latency[route], 50), "p99": percentile_ms(latency[route], 99)}
                       for route in routes_known},
        "requests_per_s": len(inputs) / wall_s,
        "concurrency": 8,
        **policy,
    }
    if oos.any():
        abstained = np.array([r.served_by == "abstain" for r, _ in results])
        out.update(accuracy_over="in-scope queries", out_of_scope=int(oos.sum()),
                   out_of_scope_recall=float(abstained[oos].mean()))
    return out


def _quick_pair(data_dir: Optional[str | Path], work: Path, oos_label: Optional[str] = None):
    from edgecascade.offline.text_build import build_text_models
    from edgecascade.offline.text_data import LabelledTexts, data_files, read_labelled_csv

    train_path, test_path = data_files(data_dir)
    train_full, test_full = read_labelled_csv(train_path), read_labelled_csv(test_path)
    classes = sorted(set(train_full.labels))[:QUICK_CLASSES]
    rows = []
    for label in classes:
        rows += [i for i, lab in enumerate(train_full.labels) if lab == label][:QUICK_TRAIN_PER_CLASS]
    train = train_full.subset(rows)
    kept = set(classes) | ({oos_label} if oos_label else set())
    test = test_full.subset([i for i, lab in enumerate(test_full.labels) if lab in kept])
    test = LabelledTexts(test.texts, test.labels, f"{test_full.source} ({len(classes)} intents)")
    facts = build_text_models(train, work / "models", name="quick", say=log.info, progress_bars=False,
                              featurizer_options={"num_features": QUICK_NUM_FEATURES}, out_of_scope_label=oos_label)
    return work / "models" / "edge", work / "models" / "cloud", sorted(classes), test, facts


def _predict_all(model, texts: Sequence[str], batch: int = 256) -> np.ndarray:
    return np.concatenate([model.predict(list(texts[i : i + batch])) for i in range(0, len(texts), batch)])


def _check_labels(edge, cloud, labels: Sequence[str]) -> None:
    from shared.errors import ConfigError

    if edge.labels != list(labels) or cloud.labels != list(labels):
        raise ConfigError(f"edge model {edge.name!r} and cloud model {cloud.name!r} must share the same labels in the same order")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
