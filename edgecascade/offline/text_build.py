"""Builds a text model pair from labelled CSVs: the INT8 ONNX edge bundle and the MiniLM cloud bundle.

    OUT/
      edge/     runtime "onnx": model.json (featurizer options), model.onnx (INT8, sparse inputs), policy.json
      cloud/    runtime "minilm_head": model.json, head.safetensors (the encoder stays in its package)
      build.json                 what was built: sizes, timings, accuracies on the eval set
      eval_predictions.npz       with an eval set: edge_probs, cloud_pred, gold (`edgecascade calibrate` reads it)

The edge policy is certified with Learn then Test (epsilon 0.01, delta 0.05, cloud answers as
labels) on the eval set when one is given and it can certify; otherwise it is a provisional
max_prob >= 0.5 that `edgecascade calibrate` should replace.

Sentence embeddings are cached under `$EDGECASCADE_CACHE_DIR/embeddings/` keyed by a hash of
the encoder's files and the texts, so a rebuild on the same data skips the encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgecascade.offline.text_data import LabelledTexts, label_names
from edgecascade.progress import Elapsed
from shared.model_card import InputSpec, ModelCard, save_card
from shared.policy import PolicyFile, save_policy

log = logging.getLogger(__name__)

BUILD_INFO_FILE = "build.json"
EVAL_PREDICTIONS_FILE = "eval_predictions.npz"
#: Inverse L2 strength of the cloud head's logistic regression on 384-d embeddings.
CLOUD_HEAD_C = 30.0
PROVISIONAL_THRESHOLD = 0.5
POLICY_EPSILON = 0.01
POLICY_DELTA = 0.05
EMBEDDING_FORMAT = "minilm-mean-l2-v1"

Say = Callable[[str], None]


def build_text_models(train: LabelledTexts, out_dir: str | Path, *, eval_set: Optional[LabelledTexts] = None,
                      name: str = "text", version: int = 1, cache_dir: Optional[Path] = None,
                      say: Say = print, progress_bars: bool = True,
                      featurizer_options: Optional[dict] = None, edge_max_bytes: Optional[int] = None,
                      out_of_scope_label: Optional[str] = None) -> dict[str, Any]:
    """Train both models on `train`, write edge/ and cloud/ under `out_dir`, and return the build facts.

    Without `num_features` in `featurizer_options`, the edge's hash buckets are the most that
    fit `edge_max_bytes` (default DEFAULT_EDGE_MAX_BYTES) at this label count. With
    `out_of_scope_label`, the edge card declares it; eval rows with that label are out-of-scope
    examples (gold -1 unless training has the label as a class)."""
    from edgecascade.offline.demo_models import default_cache_root

    started = time.perf_counter()
    out_dir = Path(out_dir)
    from edgecascade.offline.text_edge_build import DEFAULT_EDGE_MAX_BYTES, buckets_for_budget, edge_model_bytes

    labels = label_names(train)
    y = train.label_ids(labels)
    # fail early on unknown labels
    eval_y = eval_set.label_ids(labels, out_of_scope_label) if eval_set is not None else None
    timings: dict[str, float] = {}
    edge_dir, cloud_dir = out_dir / "edge", out_dir / "cloud"
    featurizer_options = dict(featurizer_options or {})
    max_bytes = DEFAULT_EDGE_MAX_BYTES if edge_max_bytes is None else int(edge_max_bytes)
    by_budget = "num_features" not in featurizer_options
    if by_budget:
        featurizer_options["num_features"] = buckets_for_budget(len(labels), max_bytes)
    buckets = int(featurizer_options["num_features"])

    say(f"[1/4] edge: hashed n-grams + logistic regression on {len(train)} texts, {len(labels)} labels, "
        f"{buckets} buckets (about {edge_model_bytes(buckets, len(labels)) / 1e6:.2f} MB; budget {max_bytes / 1e6:g} MB)")
    t = time.perf_counter()
    with Elapsed("featurizing and fitting", show=progress_bars):
        edge_card = build_edge_bundle(edge_dir, train.texts, y, labels, name=f"{name}-edge", version=version,
                                      featurizer_options=featurizer_options, out_of_scope_label=out_of_scope_label)
    timings["edge_train_s"] = time.perf_counter() - t
    say(f"      done in {timings['edge_train_s']:.1f} s")
    edge_bytes = (edge_dir / edge_card.file).stat().st_size
    if edge_bytes > max_bytes:
        why = f"even {buckets} buckets do not fit {len(labels)} labels" if by_budget else "num_features was given"
        say(f"      the edge model is {edge_bytes / 1e6:.2f} MB, over the {max_bytes / 1e6:g} MB budget ({why})")

    say("[2/4] cloud: all-MiniLM-L6-v2 sentence embeddings (cached after the first run)")
    t = time.perf_counter()
    from cloud_router.minilm_model import MiniLMOptions, save_minilm_bundle

    cloud_options = MiniLMOptions()
    embedder = EmbeddingCache(_build_encoder(cloud_options), cache_dir if cache_dir is not None else default_cache_root(),
                              progress_bars=progress_bars)
    embeddings = embedder.embed(train.texts, desc="embedding train")
    timings["cloud_embed_s"] = time.perf_counter() - t
    say(f"      done in {timings['cloud_embed_s']:.1f} s")

    say("[3/4] cloud: logistic-regression head on the embeddings")
    t = time.perf_counter()
    with Elapsed("fitting the head", show=progress_bars):
        weight, bias = train_cloud_head(embeddings, y, len(labels))
        save_minilm_bundle(cloud_dir, weight, bias, name=f"{name}-cloud", version=version, labels=labels,
                           options=cloud_options)
    timings["cloud_head_s"] = time.perf_counter() - t
    say(f"      done in {timings['cloud_head_s']:.1f} s")

    facts: dict[str, Any] = {
        "name": name,
        "version": version,
        "train_source": train.source,
        "train_size": len(train),
        "num_labels": len(labels),
        "edge_size_bytes": edge_bytes,
        "edge_max_bytes": max_bytes,
        "edge_buckets": buckets,
        "cloud_size_bytes": cloud_size_bytes(cloud_dir),
        "out_of_scope_label": out_of_scope_label,
    }
    say("[4/4] policy" + (" and eval-set accuracy" if eval_set is not None else ""))
    t = time.perf_counter()
    policy = PolicyFile.for_card(edge_card, signal="max_prob", threshold=PROVISIONAL_THRESHOLD,
                                 guarantee={"method": "none", "statement": "provisional; run edgecascade calibrate"})
    if eval_set is not None:
        edge_probs = _edge_probs(edge_dir, eval_set.texts)
        cloud_probs = head_probs(embedder.embed(eval_set.texts, desc="embedding eval"), weight, bias)
        oos = eval_set.out_of_scope(out_of_scope_label)
        extra = {"out_of_scope": oos} if oos.any() else {}
        np.savez(out_dir / EVAL_PREDICTIONS_FILE, edge_probs=edge_probs, cloud_pred=cloud_probs.argmax(1),
                 cloud_probs=cloud_probs, gold=eval_y, **extra)
        facts["eval"] = eval_facts(edge_probs[~oos], cloud_probs[~oos], eval_y[~oos], source=eval_set.source)
        if oos.any():
            facts["eval"]["out_of_scope_examples"] = int(oos.sum())
            facts["eval"]["note"] = "accuracies over in-scope examples"
        policy = certified_policy(policy, edge_probs, cloud_probs.argmax(1), say)
    save_policy(edge_dir, policy)
    timings["eval_and_policy_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    facts["policy"] = {"threshold": policy.threshold, "signal": policy.signal, **policy.guarantee}
    facts["build_s"] = {key: round(value, 2) for key, value in timings.items()}
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def build_edge_bundle(edge_dir: Path, texts: Sequence[str], y: np.ndarray, labels: Sequence[str], *, name: str,
                      version: int, featurizer_options: Optional[dict] = None,
                      out_of_scope_label: Optional[str] = None) -> ModelCard:
    """Train the linear model, write the INT8 model.onnx and model.json (no policy) to `edge_dir`."""
    from edgecascade.offline.text_edge_build import train_linear, write_sparse_int8_onnx
    from shared.text_features import featurizer_from_options, parse_featurizer_options

    options = parse_featurizer_options(featurizer_options or {}).model_dump(mode="json")
    edge_dir.mkdir(parents=True, exist_ok=True)
    featurizer = featurizer_from_options(options)
    linear = train_linear(featurizer, texts, y, len(labels))
    write_sparse_int8_onnx(edge_dir / "model.onnx", linear, name)
    card = ModelCard(name=name, version=version, labels=list(labels), runtime="onnx", file="model.onnx",
                     input=InputSpec(kind="text"), options={"featurizer": options, "intra_op_threads": 1},
                     out_of_scope_label=out_of_scope_label)
    save_card(edge_dir, card)
    return card


def _build_encoder(options):
    from cloud_router.minilm_model import MiniLMEncoder, resolve_encoder_dir

    return MiniLMEncoder(resolve_encoder_dir(options.encoder), max_length=options.max_length,
                         batch_size=options.batch_size).load()


def _edge_probs(edge_dir: Path, texts: Sequence[str]) -> np.ndarray:
    from shared.model_loader import load_model

    model = load_model(edge_dir, edge=True)
    model.load()
    return np.concatenate([model.predict(texts[i : i + 512]) for i in range(0, len(texts), 512)])


def cloud_size_bytes(cloud_dir: Path) -> int:
    """Encoder weights plus head, for a runtime "minilm_head" bundle."""
    from cloud_router.minilm_model import MiniLMHeadModel
    from shared.model_card import load_card

    return MiniLMHeadModel(load_card(cloud_dir), cloud_dir).size_bytes()


def train_cloud_head(embeddings: np.ndarray, y: np.ndarray, num_classes: int, C: float = CLOUD_HEAD_C):
    """Multinomial logistic regression on the embeddings: (weight float32 [C, d], bias float32 [C])."""
    from edgecascade.offline.text_edge_build import fit_logistic_regression

    return fit_logistic_regression(embeddings, y, num_classes, C=C, max_iter=2000)


def head_probs(embeddings: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = embeddings @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def encoder_fingerprint(encoder) -> str:
    """sha256 of what determines an embedding: the encoder's weight and tokenizer files and settings."""
    digest = hashlib.sha256(f"{EMBEDDING_FORMAT}|max_length={encoder.max_length}".encode())
    for name in sorted(p.name for p in encoder.folder.iterdir() if p.suffix in (".safetensors", ".json", ".txt")):
        digest.update(name.encode() + b"\0")
        with open(encoder.folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def texts_key(fingerprint: str, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()[:32]


class EmbeddingCache:
    """`encoder.embed(texts)` through `cache_dir/embeddings/<key>.npz`, key = hash(encoder files, texts)."""

    def __init__(self, encoder, cache_dir: Path, *, progress_bars: bool = True) -> None:
        self.encoder = encoder
        self.folder = Path(cache_dir) / "embeddings"
        self.progress_bars = progress_bars
        self.fingerprint = encoder_fingerprint(encoder)

    def path_for(self, texts: Sequence[str]) -> Path:
        return self.folder / f"{texts_key(self.fingerprint, texts)}.npz"

    def embed(self, texts: Sequence[str], desc: str = "embedding") -> np.ndarray:
        path = self.path_for(texts)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    cached = data["embeddings"]
                if cached.shape == (len(texts), self.encoder.dim):
                    log.info("embeddings of %d texts read from %s", len(texts), path)
                    return cached
            except (OSError, ValueError, KeyError):
                pass
            log.warning("embedding cache %s is unreadable; recomputing", path)
        from tqdm import tqdm

        with tqdm(total=len(texts), desc=desc, unit="text", disable=not self.progress_bars) as bar:
            embeddings = self.encoder.embed(texts, progress=bar.update)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(partial, embeddings=embeddings)
            partial.replace(path)
        except OSError as exc:
            log.warning("cannot write the embedding cache %s: %s", path, exc)
        return embeddings


def eval_facts(edge_probs: np.ndarray, cloud_probs: np.ndarray, gold: np.ndarray, *, source: str) -> dict[str, Any]:
    edge_pred, cloud_pred = edge_probs.argmax(1), cloud_probs.argmax(1)
    return {
        "source": source,
        "size": int(len(gold)),
        "edge_accuracy": round(float((edge_pred == gold).mean()), 4),
        "cloud_accuracy": round(float((cloud_pred == gold).mean()), 4),
        "agreement": round(float((edge_pred == cloud_pred).mean()), 4),
    }


def certified_policy(provisional: PolicyFile, edge_probs: np.ndarray, cloud_pred: np.ndarray, say: Say) -> PolicyFile:
    """LTT at epsilon 0.01, delta 0.05 on the eval predictions; the provisional policy if it cannot certify."""
    from edgecascade.offline.calibration import calibrated_policy
    from shared.errors import CalibrationError

    try:
        policy, result = calibrated_policy(provisional, edge_probs, cloud_pred, method="ltt", epsilon=POLICY_EPSILON,
                                           delta=POLICY_DELTA, predictions=EVAL_PREDICTIONS_FILE)
    except CalibrationError as exc:
        say(f"      policy stays provisional: {exc}")
        return provisional
    say(f"      policy: accept {policy.signal} >= {result.threshold:.4f}; defers {result.deferral_rate:.1%} of the eval set")
    return policy
