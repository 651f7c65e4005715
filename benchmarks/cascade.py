"""`edgecascade bench cascade`: the BANKING77 text cascade, offline and (with e2e) live.

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
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.common import RESULTS_DIR

log = logging.getLogger(__name__)

RESULT_FILE = "cascade_banking77.json"
PLOT_FILE = "cascade_banking77.png"
SIGNAL = "max_prob"
EPSILON, DELTA = 0.01, 0.05
QUICK_EPSILON = 0.05
N_SPLITS = 200
CALIB_FRACTION = 0.5
SPLIT_SEED = 0
CURVE_POINTS = 201
QUICK_CLASSES, QUICK_TRAIN_PER_CLASS, QUICK_NUM_FEATURES = 12, 25, 4096


def run_cascade_bench(data_dir: Optional[str | Path], out_dir: str | Path, e2e: bool = False,
                      quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, write RESULT_FILE and PLOT_FILE under `out_dir`, return the result."""
    from edgecascade.plots import plot_deferral_curve

    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    with tempfile.TemporaryDirectory(prefix="edgecascade-bench-cascade-") as tmp:
        work = Path(tmp)
        if quick:
            edge_dir, cloud_dir, labels, test, build_facts = _quick_pair(data_dir, work)
        else:
            from edgecascade.offline.text_models import ensure_text_models

            pair = ensure_text_models(data_dir)
            edge_dir, cloud_dir, labels, test, build_facts = pair.edge_dir, pair.cloud_dir, pair.labels, pair.test_set, pair.info
        result = measure(edge_dir, cloud_dir, labels, test.texts, test.label_ids(labels),
                         epsilon=QUICK_EPSILON if quick else EPSILON, quick=quick)
        result["data"] = {"test": test.source, "test_size": len(test), "num_labels": len(labels),
                          "train_size": build_facts.get("train_size"), "quick": quick}
        result["build_s"] = build_facts.get("build_s")
        if e2e:
            result["e2e"] = live_cascade(edge_dir, cloud_dir, labels, test.texts, test.label_ids(labels),
                                         result["calibrated"], work, quick=quick)
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                         "cpus": _cpu_count()}
    result["targets"] = {} if quick else check_targets(result)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    points = {
        "edge only": (0.0, result["edge_only_accuracy"]),
        "cloud only": (1.0, result["cloud_only_accuracy"]),
        "oracle": (result["oracle_deferral_rate"], result["oracle_accuracy"]),
        "calibrated (held-out half)": (result["calibrated"]["deferral_rate"], result["calibrated"]["accuracy"]),
    }
    if e2e:
        points["live e2e (held-out half)"] = (result["e2e"]["deferral_rate"], result["e2e"]["accuracy"])
    plot_deferral_curve(result["curve"], points, out_dir / PLOT_FILE,
                        title=f"BANKING77: INT8 n-gram edge -> MiniLM cloud{' (quick)' if quick else ''}")
    return result


def measure(edge_dir: Path, cloud_dir: Path, labels: Sequence[str], texts: list[str], gold: np.ndarray, *,
            epsilon: float = EPSILON, delta: float = DELTA, quick: bool = False) -> dict[str, Any]:
    """Everything but the live run; see the module docstring."""
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
    edge_probs = _predict_all(edge, texts)
    edge_batch_s = time.perf_counter() - started
    started = time.perf_counter()
    cloud_probs = _predict_all(cloud, texts)
    cloud_batch_s = time.perf_counter() - started
    edge_pred, cloud_pred = edge_probs.argmax(1), cloud_probs.argmax(1)
    scores = confidence_scores(edge_probs, SIGNAL)

    report = cascade_report(scores, edge_pred, cloud_pred, gold)
    curve = report.curve
    match = np.flatnonzero(curve[:, 1] >= report.cloud_accuracy - 1e-12)
    n = len(texts)

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
    violations = guarantee_violation_rate(scores, edge_pred, cloud_pred, gold, epsilon=epsilon, delta=delta,
                                          n_splits=N_SPLITS, calib_fraction=CALIB_FRACTION, seed=SPLIT_SEED)

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
        "guarantee_violation_rate": violations.violation_rate,
        "guarantee": violations.summary(),
        "edge_ms_per_query": edge_ms,
        "cloud_ms_per_query": cloud_ms,
        "edge_batch_ms_per_text": 1000.0 * edge_batch_s / n,
        "cloud_batch_ms_per_text": 1000.0 * cloud_batch_s / n,
        "edge_threads": int(edge.card.options.get("intra_op_threads", 1)),
        "cloud_threads": cloud.card.options.get("threads"),
        "edge_model_bytes": edge_bytes,
        "cloud_model_bytes": cloud_bytes,
        "edge_model": {"name": edge.name, "file": edge.card.file, "runtime": edge.card.runtime},
        "cloud_model": {"name": cloud.name, "file": cloud.card.file, "runtime": cloud.card.runtime,
                        "size_counts": "encoder safetensors + head"},
    }


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
                 calibrated: dict[str, Any], work: Path, *, quick: bool) -> dict[str, Any]:
    """The held-out half through SDK -> edge agent -> cloud router, with the calibrated threshold."""
    from edgecascade.demo import ROUTES, percentile_ms, replay
    from edgecascade.offline.calibration import calibration_masks
    from edgecascade.processes import Daemon
    from shared.model_card import load_card
    from shared.policy import PolicyFile

    n = len(texts)
    held_out = np.flatnonzero(~calibration_masks(n, 1, int(round(CALIB_FRACTION * n)), SPLIT_SEED)[0])
    card = load_card(edge_dir)
    threshold = calibrated["threshold"] if calibrated["certified"] else 1.1  # uncertified: defer everything
    policy_path = work / "policy.json"
    guarantee = {"method": "ltt", "epsilon": calibrated["epsilon"], "delta": calibrated["delta"], "n": calibrated["calib_size"]}
    policy = PolicyFile.for_card(card, signal=SIGNAL, threshold=threshold, guarantee=guarantee)
    policy_path.write_text(json.dumps(policy.model_dump(mode="json"), indent=2))
    inputs = [texts[i] for i in held_out]
    with Daemon("cloud", {"model_dirs": [str(cloud_dir)], "max_delay_ms": 2.0}, work, name="cloud") as cloud, \
         Daemon("edge", {"bundle_dir": str(edge_dir), "policy_file": str(policy_path), "cloud_target": cloud.target,
                         "agent_id": "bench-cascade-edge", "default_timeout_ms": 10_000.0}, work, name="edge") as edge:
        started = time.perf_counter()
        results = replay([edge.target], inputs, concurrency=8, timeout_s=20.0, progress=not quick)
        wall_s = time.perf_counter() - started
    answers = np.array([labels.index(r.label_name) for r, _ in results])
    routes = [r.served_by for r, _ in results]
    latency = {route: [ms for r, ms in results if r.served_by == route] for route in ROUTES}
    return {
        "n": len(inputs),
        "accuracy": float((answers == gold[held_out]).mean()),
        "deferral_rate": sum(route != "edge" for route in routes) / len(routes),
        "routes": {route: routes.count(route) for route in ROUTES},
        "latency_ms": {route: {"p50": percentile_ms(latency[route], 50), "p99": percentile_ms(latency[route], 99)}
                       for route in ROUTES},
        "requests_per_s": len(inputs) / wall_s,
        "concurrency": 8,
        "threshold": threshold,
    }


def _quick_pair(data_dir: Optional[str | Path], work: Path):
    from edgecascade.offline.text_build import build_text_models
    from edgecascade.offline.text_data import LabelledTexts, data_files, read_labelled_csv

    train_path, test_path = data_files(data_dir)
    train_full, test_full = read_labelled_csv(train_path), read_labelled_csv(test_path)
    classes = sorted(set(train_full.labels))[:QUICK_CLASSES]
    rows = []
    for label in classes:
        rows += [i for i, lab in enumerate(train_full.labels) if lab == label][:QUICK_TRAIN_PER_CLASS]
    train = train_full.subset(rows)
    test = test_full.subset([i for i, lab in enumerate(test_full.labels) if lab in set(classes)])
    test = LabelledTexts(test.texts, test.labels, f"{test_full.source} ({QUICK_CLASSES} intents)")
    facts = build_text_models(train, work / "models", name="quick", say=log.info, progress_bars=False,
                              featurizer_options={"num_features": QUICK_NUM_FEATURES})
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
