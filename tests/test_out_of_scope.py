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
from edgecascade.processes import Daemon, free_port
from shared.errors import ConfigError
from shared.model import load_model
from shared.model_card import OUT_OF_SCOPE, load_card, save_card
from shared.policy import DeferralPolicy, PolicyFile, load_policy, save_policy
from shared.signals import Signals, signals_of
from tests.conftest import CONFIDENT, LABELS, make_softmax_bundle


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
    with Daemon("cloud", {"model_dirs": [str(cloud)], "max_delay_ms": 2.0}, work, name="cloud") as router:
        with Daemon("edge", {"bundle_dir": str(edge), "cloud_target": router.target, "metrics_port": metrics_port},
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
