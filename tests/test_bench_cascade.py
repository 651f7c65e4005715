"""`edgecascade bench cascade` on a data set other than BANKING77: a generated intent set with
out-of-scope queries, a pair built by `edgecascade train` (--models), the result named after
the data set, and the live run answering out-of-scope queries with the abstain route."""

from __future__ import annotations

import json

import pytest

from benchmarks.cascade import dataset_name, result_paths, run_cascade_bench
from edgecascade.cli import main as cli_main
from edgecascade.offline.synthetic_intents import write_data_dir
from shared.errors import ConfigError


def test_result_files_are_named_after_the_data_set(tmp_path):
    assert dataset_name(tmp_path / "my-intents") == "my-intents"
    assert dataset_name(tmp_path / "x", "clinc oos+") == "clinc oos+"
    assert result_paths(tmp_path, "clinc oos+", quick=False) == (tmp_path / "cascade_clinc-oos.json",
                                                                  tmp_path / "cascade_clinc-oos.png")
    assert result_paths(tmp_path, "banking77", quick=True)[0].name == "cascade_banking77_quick.json"


@pytest.mark.timeout(900)  # trains a pair, measures it and runs two daemons: minutes on a loaded machine
def test_bench_on_a_trained_pair_with_out_of_scope_queries(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGECASCADE_CACHE_DIR", str(tmp_path / "cache"))
    data = write_data_dir(tmp_path / "synthetic-intents", intents=6, train_per_intent=40, test_per_intent=30,
                          out_of_scope=60, seed=5)
    models = tmp_path / "models"
    assert cli_main(["train", "--data-dir", str(data), "--out", str(models), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "hash buckets x 6 labels, budget 6 MB" in printed and "out-of-scope label 'out_of_scope'" in printed
    assert json.loads((models / "edge/model.json").read_text())["out_of_scope_label"] == "out_of_scope"
    # train's eval predictions mark the out-of-scope examples, so calibrate can set the abstain thresholds
    assert cli_main(["calibrate", "--predictions", str(models / "eval_predictions.npz"), "--bundle", str(models / "edge"),
                     "--epsilon", "0.05", "--abstain-cost", "0.01", "--out", str(tmp_path / "policy.json")]) == 0
    assert "abstain: edge below" in capsys.readouterr().out
    policy = json.loads((tmp_path / "policy.json").read_text())
    assert policy["abstain_guarantee"]["n_out_of_scope"] == 60

    out = tmp_path / "results"
    # quick: fewer latency samples; the pair is still the one `train` built
    result = run_cascade_bench(data, out, e2e=True, quick=True, models_dir=models, epsilon=0.05, progress=False)
    assert (out / "cascade_synthetic-intents_quick.json").is_file()
    assert (out / "cascade_synthetic-intents_quick.png").is_file()
    assert not list(out.glob("cascade_banking77*"))
    assert result["data"]["name"] == "synthetic-intents" and result["data"]["out_of_scope_test_size"] == 60
    assert result["targets"] == {} and "BANKING77" in result["targets_note"]
    assert result["in_scope_only"] and result["data"]["models"] == str(models)
    assert result["calibrated"]["certified"] and mixed_threshold(result) is not None

    mixed = result["out_of_scope"]
    for system in ("edge_only", "cloud_only", "cascade"):
        for row in (mixed[system], mixed[f"{system}_abstain"]):
            assert {"in_scope_accuracy", "out_of_scope_recall", "deferral_rate"} <= set(row)
        assert mixed[system]["out_of_scope_recall"] == 0.0  # no abstain threshold: every query gets a label
    assert mixed["cascade"]["out_of_scope_deferral_rate"] > 0.5  # without abstaining, out of scope goes up
    abstaining = mixed["cascade_abstain"]
    assert abstaining["out_of_scope_recall"] > 0.3 and abstaining["calib_in_scope_cost"] <= 0.01 + 1e-9
    assert abstaining["out_of_scope_deferral_rate"] < mixed["cascade"]["out_of_scope_deferral_rate"]
    assert mixed["edge_only_abstain"]["deferral_rate"] == 0.0 and mixed["cloud_only"]["deferral_rate"] == 1.0

    live = result["e2e"]
    assert live["routes"]["abstain"] > 0 and live["abstain_threshold"] == abstaining["abstain_threshold"]
    # the live cascade does what the offline measurement of the same policy says
    assert live["out_of_scope_recall"] == pytest.approx(abstaining["out_of_scope_recall"], abs=0.05)
    assert live["accuracy"] == pytest.approx(abstaining["in_scope_accuracy"], abs=0.05)
    assert live["deferral_rate"] == pytest.approx(abstaining["deferral_rate"], abs=0.05)

    # another data set with the same name never replaces this result
    other = write_data_dir(tmp_path / "elsewhere" / "synthetic-intents", intents=4, seed=9)
    with pytest.raises(ConfigError, match="holds the result of another data set"):  # refused before any work
        run_cascade_bench(other, out, quick=True, progress=False)


def mixed_threshold(result: dict):
    return result["out_of_scope"]["deferral_threshold"]
