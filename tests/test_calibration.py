"""Calibration (LTT, CRC, target rate), cascade metrics, the re-split guarantee check and
`edgecascade calibrate`, on synthetic data whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binom

from edgecascade.cli import main
from edgecascade.offline.calibration import (
    calibrate,
    calibrate_crc,
    calibrate_ltt,
    calibrate_rate,
    calibration_masks,
    guarantee_violation_rate,
    ltt_min_examples,
)
from edgecascade.offline.cascade_metrics import (
    apgr,
    cascade_at_threshold,
    cascade_report,
    cpt,
    deferral_accuracy_curve,
    endpoint_accuracies,
)
from shared.errors import CalibrationError, InvalidInputError
from shared.model_card import load_card
from shared.policy import load_policy
from shared.signals import confidence_scores, signals_of


def planted(n: int, loss_ranks: list[int]):
    """Distinct scores, highest at rank 0; edge disagrees with the cloud exactly at loss_ranks."""
    scores = np.linspace(1.0, 0.0, n, endpoint=False)
    cloud = np.zeros(n, dtype=np.int64)
    edge = np.zeros(n, dtype=np.int64)
    edge[loss_ranks] = 1
    return scores, edge, cloud


def population(rng: np.random.Generator, n: int):
    """Score ~ U(0, 1); the edge disagrees with the cloud with probability 1 - score.

    True risk of threshold t: R(t) = integral_t^1 (1 - s) ds = (1 - t)^2 / 2.
    """
    scores = rng.random(n)
    cloud = rng.integers(0, 5, n)
    disagree = rng.random(n) < 1.0 - scores
    edge = np.where(disagree, (cloud + 1) % 5, cloud)
    return scores, edge, cloud


def true_risk(threshold: float) -> float:
    return (1.0 - min(max(threshold, 0.0), 1.0)) ** 2 / 2


# --------------------------------------------------------------------------------------------
# Learn then Test


def test_ltt_stops_just_before_the_first_failing_loss_count():
    n, epsilon, delta = 1000, 0.05, 0.05
    k_star = max(k for k in range(n + 1) if binom.cdf(k, n, epsilon) <= delta)
    assert binom.cdf(k_star + 1, n, epsilon) > delta
    # k_star losses spread over the top, then the (k_star + 1)-th at rank 700.
    ranks = list(np.linspace(10, 600, k_star).astype(int)) + [700, 800, 900]
    scores, edge, cloud = planted(n, ranks)
    result = calibrate_ltt(scores, edge, cloud, epsilon, delta)
    assert result.threshold == scores[699]
    assert result.deferral_rate == pytest.approx(300 / n)
    assert result.empirical_risk == pytest.approx(k_star / n)
    assert result.p_value == pytest.approx(binom.cdf(k_star, n, epsilon))
    assert result.p_value <= delta
    assert (result.method, result.n, result.epsilon, result.delta) == ("ltt", n, epsilon, delta)


def test_ltt_accepts_everything_when_all_thresholds_pass():
    scores, edge, cloud = planted(500, [])
    result = calibrate_ltt(scores, edge, cloud, 0.05, 0.05)
    assert result.threshold == scores.min()
    assert result.deferral_rate == 0.0
    assert result.empirical_risk == 0.0


def test_ltt_ties_are_accepted_or_deferred_together():
    scores = np.array([0.9] * 200 + [0.5] * 200)
    cloud = np.zeros(400, dtype=int)
    edge = np.zeros(400, dtype=int)
    edge[200:260] = 1  # 60 losses among the 0.5s: 15 % risk if accepted
    result = calibrate_ltt(scores, edge, cloud, 0.05, 0.05)
    assert result.threshold == 0.9
    assert result.deferral_rate == 0.5


def test_ltt_refuses_when_the_most_confident_already_disagree():
    n = 299  # zero losses pass (0.99^299 <= 0.05), one loss does not
    assert binom.cdf(0, n, 0.01) <= 0.05 < binom.cdf(1, n, 0.01)
    scores, edge, cloud = planted(n, [0])
    with pytest.raises(CalibrationError, match="defer everything"):
        calibrate_ltt(scores, edge, cloud, 0.01, 0.05)


def test_ltt_too_few_examples_names_the_count_needed():
    needed = math.ceil(math.log(0.05) / math.log(1 - 0.01))
    assert needed == ltt_min_examples(0.01, 0.05) == 299
    scores, edge, cloud = planted(needed - 1, [])
    with pytest.raises(CalibrationError, match=f"at least {needed} examples"):
        calibrate_ltt(scores, edge, cloud, 0.01, 0.05)
    scores, edge, cloud = planted(needed, [])
    assert calibrate_ltt(scores, edge, cloud, 0.01, 0.05).deferral_rate == 0.0


@pytest.mark.parametrize("name", ["epsilon", "delta"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, float("nan"), "abc"])
def test_bad_epsilon_or_delta_is_named(name, value):
    scores, edge, cloud = planted(500, [])
    kwargs = {"epsilon": 0.05, "delta": 0.05, name: value}
    with pytest.raises(InvalidInputError, match=name):
        calibrate_ltt(scores, edge, cloud, **kwargs)


def test_bad_arrays_are_refused():
    with pytest.raises(InvalidInputError, match="cloud_pred has shape"):
        calibrate_ltt([0.5, 0.6], [0, 1], [0], 0.1, 0.1)
    with pytest.raises(InvalidInputError, match="non-empty"):
        calibrate_ltt([], [], [], 0.1, 0.1)
    with pytest.raises(InvalidInputError, match="non-finite"):
        calibrate_ltt([0.5, np.nan], [0, 1], [0, 1], 0.1, 0.1)
    with pytest.raises(InvalidInputError, match="integer labels"):
        calibrate_ltt([0.5, 0.6], [0.5, 1], [0, 1], 0.1, 0.1)
    with pytest.raises(InvalidInputError, match="unknown calibration method"):
        calibrate([0.5], [0], [0], method="magic")
    with pytest.raises(InvalidInputError, match="needs target_deferral_rate"):
        calibrate([0.5], [0], [0], method="rate")


def test_ltt_guarantee_holds_against_the_true_risk():
    """Over many independent calibration sets, P(R(t_hat) > epsilon) <= delta."""
    rng = np.random.default_rng(7)
    epsilon, delta, trials = 0.05, 0.1, 300
    violations = 0
    for _ in range(trials):
        scores, edge, cloud = population(rng, 800)
        result = calibrate_ltt(scores, edge, cloud, epsilon, delta)
        violations += true_risk(result.threshold) > epsilon
    slack = 3 * math.sqrt(delta * (1 - delta) / trials)
    assert violations / trials <= delta + slack
    # LTT is not vacuous: the best threshold (R = epsilon) is about 0.684.
    assert result.threshold < 0.8


# --------------------------------------------------------------------------------------------
# Conformal risk control and target rate


def test_crc_planted_threshold_and_expected_risk():
    n, epsilon = 99, 0.05  # (k + 1) / 100 <= 0.05  <=>  k <= 4
    scores, edge, cloud = planted(n, [5, 10, 20, 30, 60, 70])
    result = calibrate_crc(scores, edge, cloud, epsilon)
    assert result.threshold == scores[59]
    assert result.empirical_risk == pytest.approx(4 / n)
    assert (result.method, result.delta) == ("crc", None)

    with pytest.raises(CalibrationError, match="at least 99 examples"):
        calibrate_crc(*planted(98, []), 0.01)


def test_crc_mean_true_risk_is_below_epsilon():
    rng = np.random.default_rng(3)
    epsilon = 0.05
    risks = [true_risk(calibrate_crc(*population(rng, 400), epsilon).threshold) for _ in range(200)]
    assert np.mean(risks) <= epsilon + 0.003


def test_target_rate_threshold():
    scores = np.arange(1, 11) / 10.0
    zeros = np.zeros(10, dtype=int)
    result = calibrate_rate(scores, zeros, zeros, 0.3)
    assert result.threshold == 0.4
    assert result.deferral_rate == pytest.approx(0.3)
    assert calibrate_rate(scores, zeros, zeros, 0.0).threshold == 0.1
    everything = calibrate_rate(scores, zeros, zeros, 1.0)
    assert everything.deferral_rate == 1.0 and everything.threshold > 1.0

    tied = np.array([0.1, 0.2, 0.2, 0.3, 0.4])
    result = calibrate_rate(tied, zeros[:5], zeros[:5], 0.5)  # deferring the 0.2s too would be 0.6
    assert (result.threshold, result.deferral_rate) == (0.2, pytest.approx(0.2))
    assert result.guarantee()["target_deferral_rate"] == 0.5
    with pytest.raises(InvalidInputError, match="target deferral rate"):
        calibrate_rate(scores, zeros, zeros, 1.2)


# --------------------------------------------------------------------------------------------
# Cascade metrics


def test_curve_apgr_cpt_when_edge_fails_on_the_least_confident():
    scores = [0.1, 0.2, 0.3, 0.4]
    gold = [0, 0, 0, 0]
    cloud = [0, 0, 0, 0]
    edge = [1, 1, 0, 0]
    curve = deferral_accuracy_curve(scores, edge, cloud, gold)
    np.testing.assert_allclose(curve, [[0, 0.5], [0.25, 0.75], [0.5, 1], [0.75, 1], [1, 1]])
    assert apgr(curve, 0.5, 1.0) == pytest.approx(0.75)  # AUC 0.875
    assert cpt(curve, 0.5, 1.0, 50) == 0.25
    assert cpt(curve, 0.5, 1.0, 80) == 0.5
    report = cascade_report(scores, edge, cloud, gold)
    assert (report.edge_accuracy, report.cloud_accuracy, report.oracle_accuracy) == (0.5, 1.0, 1.0)
    assert report.apgr == pytest.approx(0.75)
    assert report.cpt == {50: 0.25, 80: 0.5, 95: 0.5}
    assert report.summary()["cpt"]["cpt95"] == 0.5


def test_curve_apgr_cpt_when_edge_fails_on_the_most_confident():
    curve = deferral_accuracy_curve([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0])
    np.testing.assert_allclose(curve[:, 1], [0.5, 0.5, 0.5, 0.75, 1])
    assert apgr(curve, 0.5, 1.0) == pytest.approx(0.25)
    assert cpt(curve, 0.5, 1.0, 50) == 0.75


def test_tied_scores_interpolate_to_random_order():
    curve = deferral_accuracy_curve([0.5] * 4, [1, 1, 0, 0], [0] * 4, [0] * 4)
    np.testing.assert_allclose(curve[:, 1], [0.5, 0.625, 0.75, 0.875, 1.0])
    assert apgr(curve, 0.5, 1.0) == pytest.approx(0.5)


def test_oracle_and_agreement_reference():
    # gold 0; edge right on 0,1; cloud right on 1,2; both wrong on 3.
    edge, cloud, gold = [0, 0, 1, 1], [2, 0, 0, 2], [0, 0, 0, 0]
    assert endpoint_accuracies(edge, cloud, gold) == (0.5, 0.5, 0.75)
    # Without gold the cloud is the reference.
    assert endpoint_accuracies(edge, cloud) == (0.25, 1.0, 1.0)
    # No gap between edge and cloud: APGR and CPT are undefined, reported as None and empty.
    report = cascade_report([0.1, 0.2, 0.3, 0.4], edge, cloud, gold)
    assert report.apgr is None and report.cpt == {}
    with pytest.raises(CalibrationError, match="no gap"):
        apgr(report.curve, 0.5, 0.5)


def test_cascade_at_threshold():
    scores = [0.1, 0.2, 0.3, 0.4]
    outcome = cascade_at_threshold(scores, [1, 1, 0, 1], [0, 0, 0, 0], 0.3, gold=[0, 0, 0, 0])
    assert (outcome.accuracy, outcome.deferral_rate) == (0.75, 0.5)
    assert cascade_at_threshold(scores, [1, 1, 0, 1], [0, 0, 0, 0], 0.0).accuracy == 0.25


# --------------------------------------------------------------------------------------------
# Re-split guarantee check


def reference_resplits(scores, edge, cloud, gold, method, epsilon, delta, n_splits, calib_fraction, seed):
    """The same splits as guarantee_violation_rate, calibrated one by one."""
    n = scores.size
    masks = calibration_masks(n, n_splits, int(round(calib_fraction * n)), seed)
    assert np.all(masks.sum(axis=1) == int(round(calib_fraction * n)))
    thresholds, drops, deferrals, pool_drops = [], [], [], []
    for calib in masks:
        test = ~calib
        try:
            threshold = calibrate(scores[calib], edge[calib], cloud[calib], method, epsilon, delta).threshold
        except CalibrationError:
            threshold = np.inf
        outcome = cascade_at_threshold(scores[test], edge[test], cloud[test], threshold, gold[test])
        thresholds.append(threshold)
        drops.append((cloud[test] == gold[test]).mean() - outcome.accuracy)
        deferrals.append(outcome.deferral_rate)
        pool = cascade_at_threshold(scores, edge, cloud, threshold, gold)
        pool_drops.append((cloud == gold).mean() - pool.accuracy)
    return np.array(thresholds), np.array(drops), np.array(deferrals), np.array(pool_drops)


@pytest.mark.parametrize("method", ["ltt", "crc"])
def test_violation_rate_matches_split_by_split_calibration(method):
    rng = np.random.default_rng(11)
    scores, edge, cloud = population(rng, 1200)
    scores = np.round(scores, 2)  # ties, and scores missing from some calibration parts
    gold = np.where(rng.random(scores.size) < 0.9, cloud, (cloud + 2) % 5)
    report = guarantee_violation_rate(
        scores, edge, cloud, gold, 0.08, 0.1, n_splits=100, calib_fraction=0.3, seed=5, method=method
    )
    delta = 0.1 if method == "ltt" else None
    thresholds, drops, deferrals, pool_drops = reference_resplits(
        scores, edge, cloud, gold, method, 0.08, delta, 100, 0.3, 5
    )
    np.testing.assert_array_equal(report.thresholds, thresholds)
    np.testing.assert_allclose(report.pool_drops, pool_drops, atol=1e-12)
    np.testing.assert_allclose(report.drops, drops, atol=1e-12)
    np.testing.assert_allclose(report.deferral_rates, deferrals, atol=1e-12)
    assert report.violation_rate == np.mean(drops > 0.08)
    assert (report.calib_size, report.test_size, report.n_splits) == (360, 840, 100)


def test_uncertified_splits_defer_everything():
    rng = np.random.default_rng(4)
    n = 60  # 30 to calibrate: at epsilon 0.08, delta 0.1 only zero losses pass
    scores = rng.random(n)
    cloud = np.zeros(n, dtype=int)
    edge = (rng.random(n) < 0.2).astype(int)
    gold = cloud.copy()
    report = guarantee_violation_rate(scores, edge, cloud, gold, 0.08, 0.1, n_splits=100, seed=1)
    thresholds, drops, deferrals, _ = reference_resplits(scores, edge, cloud, gold, "ltt", 0.08, 0.1, 100, 0.5, 1)
    assert 0 < report.uncertified_splits < 100
    np.testing.assert_array_equal(report.thresholds, thresholds)
    np.testing.assert_allclose(report.drops, drops, atol=1e-12)
    np.testing.assert_allclose(report.deferral_rates, deferrals, atol=1e-12)
    uncertified = np.isinf(report.thresholds)
    assert np.all(report.deferral_rates[uncertified] == 1.0) and np.all(report.drops[uncertified] == 0.0)


def test_violation_rate_on_a_fixed_pool():
    rng = np.random.default_rng(2)
    scores, edge, cloud = population(rng, 3080)
    report = guarantee_violation_rate(scores, edge, cloud, None, 0.05, 0.1, n_splits=200, calib_fraction=0.5, seed=0)
    assert report.uncertified_splits == 0
    assert report.mean_drop < 0.05
    # Against the pool (the population the splits come from) the guarantee holds with room.
    assert report.pool_violation_rate <= 0.1
    # The test part adds noise and anti-correlation: near delta or above, never wildly.
    assert report.violation_rate <= 3 * 0.1
    summary = report.summary()
    assert summary["n_splits"] == 200 and 0 < summary["mean_deferral_rate"] < 1


def test_violation_rate_bad_arguments():
    scores, edge, cloud = planted(400, [])
    with pytest.raises(InvalidInputError, match="n_splits"):
        guarantee_violation_rate(scores, edge, cloud, None, 0.05, 0.05, n_splits=10)
    with pytest.raises(InvalidInputError, match="calib_fraction"):
        guarantee_violation_rate(scores, edge, cloud, None, 0.05, 0.05, calib_fraction=1.0)
    with pytest.raises(CalibrationError, match="at least 299"):
        guarantee_violation_rate(scores, edge, cloud, None, 0.01, 0.05, calib_fraction=0.5)


# --------------------------------------------------------------------------------------------
# edgecascade calibrate


LABELS = ["a", "b", "c"]


@pytest.fixture()
def bundle(tmp_path):
    bundle_dir = tmp_path / "edge"
    bundle_dir.mkdir()
    (bundle_dir / "model.onnx").write_bytes(b"not really onnx")
    card = {
        "name": "tiny-edge",
        "version": 3,
        "labels": LABELS,
        "input": {"kind": "text"},
        "runtime": "onnx",
    }
    (bundle_dir / "model.json").write_text(json.dumps(card))
    return bundle_dir


def write_predictions(path, n, seed=0, with_gold=True):
    """Edge probabilities whose max_prob is U(0.4, 1); disagreement with the cloud as in population()."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.4, 1.0, n)
    edge_pred = rng.integers(0, 3, n)
    probs = np.full((n, 3), 0.0)
    probs[np.arange(n), edge_pred] = top
    probs[np.arange(n), (edge_pred + 1) % 3] = 1 - top
    disagree = rng.random(n) < (1.0 - top)
    cloud_pred = np.where(disagree, (edge_pred + 2) % 3, edge_pred)
    arrays = {"edge_probs": probs.astype(np.float32), "cloud_pred": cloud_pred}
    if with_gold:
        arrays["gold"] = cloud_pred
    np.savez(path, **arrays)
    return probs.astype(np.float32), cloud_pred


def test_cli_writes_a_certified_policy(tmp_path, bundle, capsys):
    probs, cloud_pred = write_predictions(tmp_path / "preds.npz", 2000)
    rc = main(["calibrate", "--predictions", str(tmp_path / "preds.npz"), "--bundle", str(bundle),
               "--epsilon", "0.05", "--delta", "0.05"])
    assert rc == 0
    policy = load_policy(bundle / "policy.json")
    policy.check_matches(load_card(bundle))
    expected = calibrate_ltt(confidence_scores(probs, "max_prob"), probs.argmax(1), cloud_pred, 0.05, 0.05)
    assert policy.spec.threshold == expected.threshold
    assert policy.spec.signal == "max_prob"
    guarantee = policy.spec.guarantee
    assert (guarantee["method"], guarantee["epsilon"], guarantee["delta"], guarantee["n"]) == ("ltt", 0.05, 0.05, 2000)
    assert guarantee["empirical_risk"] == pytest.approx(expected.empirical_risk)
    out = capsys.readouterr().out
    assert "P(accuracy drop vs cloud > 0.05) <= 0.05" in out and "cascade" in out


def test_cli_crc_and_rate_to_another_file(tmp_path, bundle):
    probs, _ = write_predictions(tmp_path / "preds.npz", 500, with_gold=False)
    out = tmp_path / "policies" / "crc.json"
    assert main(["calibrate", "--predictions", str(tmp_path / "preds.npz"), "--bundle", str(bundle),
                 "--method", "crc", "--epsilon", "0.05", "--signal", "entropy", "--out", str(out)]) == 0
    policy = load_policy(out)
    spec = policy.spec
    assert spec.signal == "entropy" and spec.threshold <= 0 and spec.guarantee["method"] == "crc"
    # The agent, deciding one request at a time, defers exactly what calibration counted.
    deferred = [not policy.decide(signals_of(row), input_length=1).accept for row in probs]
    assert np.mean(deferred) == pytest.approx(spec.guarantee["deferral_rate"])
    assert not (bundle / "policy.json").exists()

    assert main(["calibrate", "--predictions", str(tmp_path / "preds.npz"), "--bundle", str(bundle),
                 "--method", "rate", "--target-deferral-rate", "0.25"]) == 0
    spec = load_policy(bundle / "policy.json").spec
    assert spec.guarantee["deferral_rate"] <= 0.25


def test_cli_refuses_to_write_when_certification_fails(tmp_path, bundle, capsys):
    write_predictions(tmp_path / "preds.npz", 100)
    rc = main(["calibrate", "--predictions", str(tmp_path / "preds.npz"), "--bundle", str(bundle),
               "--epsilon", "0.01", "--delta", "0.05"])
    assert rc == 2
    assert "at least 299 examples" in capsys.readouterr().err
    assert not (bundle / "policy.json").exists()


@pytest.mark.parametrize(
    "arrays, extra, message",
    [
        ({"edge_probs": np.full((5, 3), 1 / 3)}, [], "lacks cloud_pred"),
        ({"edge_probs": np.full((5, 4), 0.25), "cloud_pred": np.zeros(5, int)}, [], "4 classes"),
        ({"edge_probs": np.full((5, 3), 1 / 3), "cloud_pred": np.full(5, 7)}, [], "outside"),
        ({"edge_probs": np.full((5, 3), 1 / 3), "cloud_pred": np.zeros(5, int)}, ["--method", "rate"], "needs --target-deferral-rate"),
        ({"edge_probs": np.full((5, 3), 1 / 3), "cloud_pred": np.zeros(5, int)}, ["--epsilon", "2"], "epsilon must be in"),
    ],
)
def test_cli_bad_inputs_exit_2(tmp_path, bundle, capsys, arrays, extra, message):
    np.savez(tmp_path / "preds.npz", **arrays)
    rc = main(["calibrate", "--predictions", str(tmp_path / "preds.npz"), "--bundle", str(bundle), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_cli_missing_files_exit_2(tmp_path, bundle, capsys):
    assert main(["calibrate", "--predictions", str(tmp_path / "nope.npz"), "--bundle", str(bundle)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_text("junk")
    assert main(["calibrate", "--predictions", str(tmp_path / "junk.npz"), "--bundle", str(bundle)]) == 2
    assert "not a predictions .npz" in capsys.readouterr().err
