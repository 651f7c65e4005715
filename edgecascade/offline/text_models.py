"""The BANKING77 text model pair for benchmarks, built once per data set and cached.

    $EDGECASCADE_CACHE_DIR (default ~/.cache/edgecascade)/text-v2-<hash of train.csv + test.csv>/
      edge/  cloud/  build.json  eval_predictions.npz      (as written by `edgecascade train`)
    .../embeddings/                                        (the shared sentence-embedding cache)

The first call trains on train.csv with test.csv as the eval set (a few minutes on 2 cores,
most of it the encoder) in a hidden sibling directory and renames it into place, so an
interrupted build never leaves a half cache. The data itself is read from the data
directory every time, never copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from edgecascade.offline.text_build import BUILD_INFO_FILE
from edgecascade.offline.text_data import LabelledTexts, data_files, read_labelled_csv
from shared.errors import ConfigError

log = logging.getLogger(__name__)

#: Bump when the build changes what it produces.
TEXT_FORMAT = "text-v2"  # v2: sparse-input INT8 edge graph
_REQUIRED = ("edge/model.json", "edge/model.onnx", "edge/policy.json", "cloud/model.json", "cloud/head.safetensors",
             BUILD_INFO_FILE)


@dataclass(frozen=True)
class TextModels:
    """A built pair and the data set it was built from."""

    root: Path
    info: dict
    train_path: Path
    test_path: Path

    @property
    def edge_dir(self) -> Path:
        return self.root / "edge"

    @property
    def cloud_dir(self) -> Path:
        return self.root / "cloud"

    @property
    def labels(self) -> list[str]:
        return json.loads((self.edge_dir / "model.json").read_text())["labels"]

    @cached_property
    def test_set(self) -> LabelledTexts:
        return read_labelled_csv(self.test_path)

    @property
    def test_texts(self) -> list[str]:
        return self.test_set.texts

    @property
    def test_labels(self) -> np.ndarray:
        """Test label indices into `labels`, int64 [N]."""
        return self.test_set.label_ids(self.labels)


def data_fingerprint(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def ensure_text_models(data_dir: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None, *,
                       rebuild: bool = False, progress_bars: bool = True) -> TextModels:
    """The pair for `data_dir` (default: BANKING77, see `edgecascade.offline.text_data`), building it the first time."""
    from edgecascade.offline.demo_models import default_cache_root

    train_path, test_path = data_files(data_dir)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    root = cache_root / f"{TEXT_FORMAT}-{data_fingerprint(train_path, test_path)}"
    if rebuild or not root.exists():
        _build_into(root, train_path, test_path, cache_root, replace=rebuild, progress_bars=progress_bars)
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    if missing:
        raise ConfigError(f"text model cache {root} is incomplete (missing {missing}); delete it to rebuild")
    return TextModels(root=root, info=json.loads((root / BUILD_INFO_FILE).read_text()),
                      train_path=train_path, test_path=test_path)


#: What `benchmarks.serve` calls: the default data set.
ensure_banking77_models = ensure_text_models


def _build_into(root: Path, train_path: Path, test_path: Path, cache_root: Path, *, replace: bool,
                progress_bars: bool) -> None:
    from edgecascade.offline.text_build import build_text_models

    building = root.parent / f".{root.name}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        building.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the text model cache in {root.parent}: {exc}") from None
    log.info("building the text models for %s in %s (first run only)", train_path.parent, root)
    try:
        from edgecascade.offline.text_data import find_out_of_scope_label

        train, test = read_labelled_csv(train_path), read_labelled_csv(test_path)
        build_text_models(train, building, eval_set=test, name=train_path.resolve().parent.name or "text",
                          cache_dir=cache_root, say=log.info, progress_bars=progress_bars,
                          out_of_scope_label=find_out_of_scope_label(train, test))
        old = None
        if replace and root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            root.rename(old)
        try:
            building.rename(root)
        except OSError:
            if not root.exists():  # another process finished first: keep theirs
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)
