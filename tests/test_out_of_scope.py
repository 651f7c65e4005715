"""Out-of-scope answers: the policy's abstain thresholds, the bundle's out-of-scope label, and the
`abstain` route through the SDK, KServe, GetStatus and /metrics of a real agent and router."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest

from edge_agent.cascade import ActiveModel, Cascade
from edgecascade import Client
from edgecascade.processes import InProcessDaemon, free_port
from shared.errors import ConfigError
from shared.model_card import OUT_OF_SCOPE, load_card, save_card
from shared.model_loader import load_model
from shared.policy import DeferralPolicy, PolicyFile, load_policy, save_policy
from shared.signals import Signals, signals_of
from tests.helpers.bundles import CONFIDENT, LABELS, make_softmax_bundle


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}

#: Edge max_prob 1/3: below the abstain threshold.
NOWHERE = np.zeros(3, dtype=np.float32)
#: Edge max_prob 0.37 (deferred); the cloud answers "b" with max_prob 0.67 (below its abstain threshold).
CLOUD_UNSURE = np.array([0.2, 0.1, 0.0], dtype=np.float32)
#: Edge max_prob 0.45 (deferred); the cloud answers "b" with max_prob 0.98.
CLOUD_SURE = np.array([0.6, 0.2, 0.0], dtype=np.float32)
#: The edge is confident of "c", the declared out-of-scope class.
CONFIDENT_C = np.array([0.0, 0.0, 4.0], dtype=np.float32)

ABSTAIN, CLOUD_ABSTAIN = 0.35, 0.9


def policy(**fields) -> PolicyFile:
    return PolicyFile(**{"model_name": "m", "model_version": 1, "labels": LABELS, "threshold": 0.6, **fields})


def test_policy_splits_scores_in_three():
    rule = DeferralPolicy(policy(abstain_threshold=ABSTAIN, cloud_abstain_threshold=CLOUD_ABSTAIN))
    assert rule.decide(signals_of(np.array([0.9, 0.05, 0.05])), 1).accept
    middle = rule.decide(signals_of(np.array([0.5, 0.3, 0.2])), 1)
    assert (middle.accept, middle.abstain, middle.reason) == (False, False, "low_confidence")
    low = rule.decide(signals_of(np.array([0.34, 0.33, 0.33])), 1)
    assert (low.accept, low.abstain, low.reason) == (False, True, "out_of_scope")
    assert rule.cloud_abstains(signals_of(np.array([0.8, 0.1, 0.1])))
    assert not rule.cloud_abstains(signals_of(np.array([0.95, 0.03, 0.02])))
    # pressure lowers the deferral threshold, never the abstain threshold
    shifted = DeferralPolicy(policy(min_threshold=0.4, abstain_threshold=ABSTAIN))
    assert shifted.decide(signals_of(np.array([0.34, 0.33, 0.33])), 1, pressure=1.0).abstain
    assert shifted.decide(signals_of(np.array([0.45, 0.3, 0.25])), 1, pressure=1.0).accept


def test_policy_without_abstain_thresholds_never_abstains():
    rule = DeferralPolicy(policy())
    assert not rule.decide(Signals(0.01, 0.0, 5.0), 1).abstain
    assert not rule.cloud_abstains(Signals(0.01, 0.0, 5.0))


def test_entropy_abstain_threshold_is_on_negated_entropy():
    rule = DeferralPolicy(policy(signal="entropy", threshold=-0.5, abstain_threshold=-1.0))
    assert rule.decide(Signals(0.4, 0.0, 1.05), 1).abstain          # score -1.05 < -1.0
    assert not rule.decide(Signals(0.4, 0.0, 0.8), 1).abstain       # score -0.8: deferred
    assert rule.decide(Signals(0.9, 0.8, 0.3), 1).accept


@pytest.mark.parametrize("fields, words", [
    ({"abstain_threshold": 0.7}, "abstain_threshold 0.7 is above threshold 0.6"),
    ({"min_threshold": 0.4, "abstain_threshold": 0.5}, "abstain_threshold 0.5 is above min_threshold 0.4"),
])
def test_abstain_threshold_above_the_deferral_threshold_is_refused(tmp_path, fields, words):
    (tmp_path / "policy.json").write_text(json.dumps({**policy().model_dump(mode="json"), **fields}))
    with pytest.raises(ConfigError, match=words):
        load_policy(tmp_path / "policy.json")


def test_card_abstain_label(tmp_path):
    bundle = make_softmax_bundle(tmp_path / "b", name="b", scale=1.0)
    card = load_card(bundle)
    assert card.abstain_label == (-1, OUT_OF_SCOPE)
    assert card.model_copy(update={"out_of_scope_label": "c"}).abstain_label == (2, "c")
    assert card.model_copy(update={"out_of_scope_label": "none_of_these"}).abstain_label == (-1, "none_of_these")
    raw = json.loads((bundle / "model.json").read_text())
    (bundle / "model.json").write_text(json.dumps({**raw, "out_of_scope_label": ""}))
    with pytest.raises(ConfigError, match="out_of_scope_label"):
        load_card(bundle)


def test_cascade_without_cloud_abstains_before_deferring(tmp_path):
    bundle = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    save_policy(bundle, PolicyFile(model_name="toy-edge", model_version=1, labels=LABELS, threshold=0.6,
                                   abstain_threshold=ABSTAIN))
    model = load_model(bundle, edge=True)
    model.load()
    cascade = Cascade(ActiveModel(model, load_policy(bundle / "policy.json")), None)
    result = asyncio.run(cascade.infer(NOWHERE, deadline_s=1e12, request_id="r"))
    assert (result.route, result.abstain_reason, result.prediction.label, result.prediction.label_name) == (
        "abstain", "edge_low_confidence", -1, OUT_OF_SCOPE)
    np.testing.assert_allclose(result.prediction.probabilities, 1 / 3, atol=1e-6)
    deferred = asyncio.run(cascade.infer(CLOUD_UNSURE, deadline_s=1e12, request_id="r"))
    assert (deferred.route, deferred.fallback_reason) == ("edge_fallback", "no_cloud")
    assert cascade.abstain_counts == {"edge_low_confidence": 1}


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    work = tmp_path_factory.mktemp("oos")
    edge = make_softmax_bundle(work / "edge", name="toy-edge", scale=1.0)
    card = load_card(edge)
    save_card(edge, card.model_copy(update={"out_of_scope_label": "c"}))
    save_policy(edge, PolicyFile(model_name="toy-edge", model_version=1, labels=LABELS, threshold=0.6,
                                 abstain_threshold=ABSTAIN, cloud_abstain_threshold=CLOUD_ABSTAIN))
    cloud = make_softmax_bundle(work / "cloud", name="toy-cloud", scale=10.0, permute=True)
    metrics_port = free_port()
    with InProcessDaemon("cloud", {"model_dirs": [str(cloud)], "max_delay_ms": 2.0}, work, name="cloud") as router:
        with InProcessDaemon("edge", {"bundle_dir": str(edge), "cloud_target": router.target, "metrics_port": metrics_port},
                    work, name="edge") as agent:
            yield {"agent": agent, "metrics_port": metrics_port}


def test_abstain_route_end_to_end(daemons):
    before = scrape(daemons["metrics_port"])
    with Client(daemons["agent"].target, timeout_s=5.0) as sdk:
        edge_abstain = sdk.infer(NOWHERE)
        cloud_abstain = sdk.infer(CLOUD_UNSURE)
        answered = sdk.infer(CLOUD_SURE)
        edge_label = sdk.infer(CONFIDENT_C)
        edge = sdk.infer(CONFIDENT)
        status = sdk.status()
    assert (edge_abstain.served_by, edge_abstain.abstain_reason, edge_abstain.label, edge_abstain.label_name) == (
        "abstain", "edge_low_confidence", 2, "c")
    assert edge_abstain.out_of_scope and edge_abstain.cloud_ms == 0 and edge_abstain.model_name == "toy-edge"
    assert (cloud_abstain.served_by, cloud_abstain.abstain_reason, cloud_abstain.label_name) == (
        "abstain", "cloud_low_confidence", "c")
    assert cloud_abstain.model_name == "toy-cloud" and cloud_abstain.defer_reason == "low_confidence"
    assert cloud_abstain.cloud_ms > 0
    assert (answered.served_by, answered.label_name, answered.abstain_reason) == ("cloud", "b", "")
    assert (edge_label.served_by, edge_label.abstain_reason, edge_label.label_name) == (
        "abstain", "edge_out_of_scope_label", "c")
    assert (edge.served_by, edge.label_name, edge.out_of_scope) == ("edge", "a", False)

    assert status.abstain_threshold == pytest.approx(ABSTAIN)
    assert status.cloud_abstain_threshold == pytest.approx(CLOUD_ABSTAIN)
    assert status.out_of_scope_label == "c" and status.route_counts["abstain"] >= 3

    after = scrape(daemons["metrics_port"])

    def moved(name, **labels):
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("edgecascade_requests_total", api="edgecascade", route="abstain", status="OK") == 3
    assert moved("edgecascade_abstentions_total", reason="edge_low_confidence") == 1
    assert moved("edgecascade_abstentions_total", reason="cloud_low_confidence") == 1
    assert moved("edgecascade_abstentions_total", reason="edge_out_of_scope_label") == 1
    assert moved("edgecascade_deferrals_total", reason="low_confidence") == 2  # the two the cloud saw


def test_abstain_in_kserve_parameters(daemons):
    triton = pytest.importorskip("tritonclient.grpc")
    client = triton.InferenceServerClient(daemons["agent"].target)
    try:
        tensor = triton.InferInput("input", [3, 3], "FP32")
        tensor.set_data_from_numpy(np.stack([NOWHERE, CLOUD_SURE, CONFIDENT]))
        result = client.infer("toy-edge", [tensor], timeout=5_000_000)
    finally:
        client.close()
    assert result.as_numpy("served_by").tolist() == [b"abstain", b"cloud", b"edge"]
    assert result.as_numpy("label_name").tolist() == [b"c", b"b", b"a"]
    parameters = result.get_response().parameters
    assert parameters["abstain_reason"].string_param == "edge_low_confidence,,"


# --- calibrating the abstain thresholds -------------------------------------------------------


def mixed_data(seed: int = 0, n_in: int = 900, n_oos: int = 300, classes: int = 5):
    """Scores and predictions where out-of-scope queries tend to score low on both sides."""
    rng = np.random.default_rng(seed)
    gold = np.concatenate([rng.integers(0, classes, n_in), np.full(n_oos, -1)])
    oos = gold < 0
    edge_scores = np.where(oos, rng.beta(2, 5, gold.size), rng.beta(5, 2, gold.size))
    cloud_scores = np.where(oos, rng.beta(2, 4, gold.size), rng.beta(8, 2, gold.size))
    edge_pred = np.where(rng.random(gold.size) < edge_scores, gold, rng.integers(0, classes, gold.size))
    cloud_pred = np.where(rng.random(gold.size) < cloud_scores, gold, rng.integers(0, classes, gold.size))
    edge_pred[oos] = rng.integers(0, classes, n_oos)
    cloud_pred[oos] = rng.integers(0, classes, n_oos)
    return edge_scores, edge_pred, cloud_scores, cloud_pred, gold, oos


def cascade_by_hand(edge_scores, edge_pred, cloud_scores, cloud_pred, threshold, abstain, cloud_abstain):
    """The cascade's rule one query at a time, as edge_agent.cascade applies it."""
    labels, deferred = [], []
    for s, e, sc, c in zip(edge_scores, edge_pred, cloud_scores, cloud_pred):
        if s >= threshold:
            labels.append(e)
            deferred.append(False)
        elif abstain is not None and s < abstain:
            labels.append(None)
            deferred.append(False)
        else:
            deferred.append(True)
            labels.append(None if cloud_abstain is not None and sc < cloud_abstain else c)
    return labels, np.array(deferred)


def test_abstain_calibration_keeps_the_in_scope_cost_and_matches_the_cascade_rule():
    from edgecascade.offline.out_of_scope import calibrate_abstain, mixed_traffic

    data = mixed_data()
    edge_scores, edge_pred, cloud_scores, cloud_pred, gold, oos = data
    fit = calibrate_abstain(*data, threshold=0.7, max_in_scope_cost=0.01)
    assert fit.n == 1200 and fit.n_out_of_scope == 300
    assert fit.baseline.out_of_scope_recall == 0.0
    assert fit.baseline.in_scope_accuracy - fit.calibrated.in_scope_accuracy <= 0.01 + 1e-12
    assert fit.calibrated.out_of_scope_recall > 0.3
    assert fit.calibrated.deferral_rate < fit.baseline.deferral_rate  # fewer queries reach the cloud
    assert fit.abstain_threshold is not None and fit.abstain_threshold <= 0.7
    again = mixed_traffic(*data, threshold=0.7, abstain_threshold=fit.abstain_threshold,
                          cloud_abstain_threshold=fit.cloud_abstain_threshold)
    assert again == fit.calibrated
    labels, deferred = cascade_by_hand(edge_scores, edge_pred, cloud_scores, cloud_pred, 0.7, fit.abstain_threshold,
                                       fit.cloud_abstain_threshold)
    abstained = np.array([label is None for label in labels])
    correct = np.array([label is not None and label == g for label, g in zip(labels, gold)])
    assert again.out_of_scope_recall == pytest.approx(abstained[oos].mean())
    assert again.in_scope_accuracy == pytest.approx(correct[~oos].mean())
    assert again.deferral_rate == pytest.approx(deferred.mean())
    tighter = calibrate_abstain(*data, threshold=0.7, max_in_scope_cost=0.0)
    assert tighter.calibrated.in_scope_accuracy >= fit.baseline.in_scope_accuracy - 1e-12
    assert tighter.calibrated.out_of_scope_recall <= fit.calibrated.out_of_scope_recall
    edge_only = calibrate_abstain(*data, threshold=0.7, max_in_scope_cost=0.01, cloud=False)
    assert edge_only.cloud_abstain_threshold is None


def test_abstain_calibration_refuses_data_without_both_kinds():
    from edgecascade.offline.out_of_scope import calibrate_abstain
    from shared.errors import CalibrationError

    edge_scores, edge_pred, cloud_scores, cloud_pred, gold, oos = mixed_data()
    with pytest.raises(CalibrationError, match="no out-of-scope examples"):
        calibrate_abstain(edge_scores, edge_pred, cloud_scores, cloud_pred, gold, np.zeros_like(oos), threshold=0.7,
                          max_in_scope_cost=0.01)
    with pytest.raises(CalibrationError, match="only out-of-scope"):
        calibrate_abstain(edge_scores, edge_pred, cloud_scores, cloud_pred, gold, np.ones_like(oos), threshold=0.7,
                          max_in_scope_cost=0.01)
    from shared.errors import InvalidInputError
    with pytest.raises(InvalidInputError, match="max_in_scope_cost"):
        calibrate_abstain(edge_scores, edge_pred, cloud_scores, cloud_pred, gold, oos, threshold=0.7,
                          max_in_scope_cost=1.5)


def probs_with_max(scores: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """[N, C] probabilities whose argmax is `pred` and whose max is about `scores` (>= 1/C)."""
    top = np.maximum(scores, 1.0 / classes + 1e-3)
    probs = np.repeat(((1 - top) / (classes - 1))[:, None], classes, axis=1)
    probs[np.arange(len(pred)), pred] = top
    return probs.astype(np.float32)


def test_calibrate_command_writes_abstain_thresholds(tmp_path, capsys):
    from edgecascade.cli import main as cli_main

    classes = 5
    edge_scores, edge_pred, cloud_scores, cloud_pred, gold, oos = mixed_data(classes=classes)
    bundle = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    raw = json.loads((bundle / "model.json").read_text())
    raw["labels"] = [f"l{i}" for i in range(classes)]
    (bundle / "model.json").write_text(json.dumps(raw))
    predictions = tmp_path / "p.npz"
    np.savez(predictions, edge_probs=probs_with_max(edge_scores, edge_pred, classes), cloud_pred=cloud_pred,
             cloud_probs=probs_with_max(cloud_scores, cloud_pred, classes), gold=gold, out_of_scope=oos)
    out = tmp_path / "policy.json"
    assert cli_main(["calibrate", "--predictions", str(predictions), "--bundle", str(bundle), "--method", "crc",
                     "--epsilon", "0.2", "--abstain-cost", "0.01", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "abstain: edge below" in printed and "out-of-scope recall 0.0000 ->" in printed
    spec = json.loads(out.read_text())
    assert spec["abstain_threshold"] is not None and spec["abstain_threshold"] <= spec["threshold"]
    assert spec["abstain_guarantee"]["in_scope_cost"] <= 0.01 + 1e-9
    assert spec["abstain_guarantee"]["out_of_scope_recall"] > 0

    np.savez(predictions, edge_probs=probs_with_max(edge_scores, edge_pred, classes), cloud_pred=cloud_pred, gold=np.abs(gold))
    assert cli_main(["calibrate", "--predictions", str(predictions), "--bundle", str(bundle), "--method", "crc",
                     "--epsilon", "0.2", "--abstain-cost", "0.01", "--out", str(out)]) == 2
    assert "--abstain-cost needs out_of_scope and gold" in capsys.readouterr().err


@pytest.mark.parametrize("method, extra", [("crc", []), ("rate", ["--target-deferral-rate", "0.3"])])
def test_delta_is_refused_outside_ltt(tmp_path, capsys, method, extra):
    from edgecascade.cli import main as cli_main

    bundle = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    predictions = tmp_path / "p.npz"
    np.savez(predictions, edge_probs=np.full((10, 3), 1 / 3, np.float32), cloud_pred=np.zeros(10, np.int64))
    assert cli_main(["calibrate", "--predictions", str(predictions), "--bundle", str(bundle), "--method", method,
                     "--delta", "0.1", *extra]) == 2
    assert f"--delta only applies to --method ltt: {method} has no delta" in capsys.readouterr().err


def test_entropy_threshold_is_reported_as_negated_entropy(tmp_path, capsys):
    from edgecascade.cli import main as cli_main

    bundle = make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0)
    predictions = tmp_path / "p.npz"
    np.savez(predictions, edge_probs=np.tile(np.array([[0.8, 0.1, 0.1]], np.float32), (10, 1)),
             cloud_pred=np.zeros(10, np.int64))
    assert cli_main(["calibrate", "--predictions", str(predictions), "--bundle", str(bundle), "--method", "rate",
                     "--target-deferral-rate", "0.5", "--signal", "entropy"]) == 0
    assert "on -entropy (negated entropy) (accept when score >= threshold)" in capsys.readouterr().out
