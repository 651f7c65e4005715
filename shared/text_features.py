"""Text to a fixed-width feature vector for edge text models: hashed n-gram counts, numpy only.

    model.json options: {"featurizer": {"kind": "hashed_ngrams", "num_features": 65536,
                                        "word_ngrams": [1, 2], "char_ngrams": [2, 5]}}

Text is lower-cased and split into words (runs of Unicode word characters). Features are:
word n-grams for each n in `word_ngrams` (with sentence-start and -end markers for n > 1)
and character n-grams for each n in `char_ngrams`, taken inside each word padded with one
space on both sides. Each feature string, prefixed by its kind, is hashed with CRC-32 (the
same on every machine and process, unlike Python's salted `hash()`) into `num_features`
buckets. A bucket's value is 1 + ln(count), or 0 when empty.

The featurizer gives raw bucket values. IDF weighting and L2 normalisation belong to the
model graph (see `edgecascade.offline.text_build`), so a bundle's weights live in one file.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import ConfigError, InvalidInputError

_WORD = re.compile(r"\w+")
_START, _END = "\x02", "\x03"  # sentence markers for word n-grams; never inside a \w+ word


class HashedNgramOptions(BaseModel):
    """`options["featurizer"]` of an edge text model."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["hashed_ngrams"] = "hashed_ngrams"
    num_features: int = Field(default=65536, ge=16, le=1 << 24)
    """Hash buckets: the width F of the feature vector."""
    word_ngrams: tuple[int, int] = (1, 2)
    """Smallest and largest word n-gram length (inclusive); (0, 0) for none."""
    char_ngrams: tuple[int, int] = (2, 5)
    """Smallest and largest character n-gram length inside words (inclusive); (0, 0) for none."""

    @model_validator(mode="after")
    def _ranges(self) -> "HashedNgramOptions":
        for name in ("word_ngrams", "char_ngrams"):
            low, high = getattr(self, name)
            if (low, high) != (0, 0) and not (1 <= low <= high <= 16):
                raise ValueError(f"{name} must be (low, high) with 1 <= low <= high <= 16, or (0, 0); got {(low, high)}")
        if self.word_ngrams == (0, 0) and self.char_ngrams == (0, 0):
            raise ValueError("word_ngrams and char_ngrams are both (0, 0): no features")
        return self


class HashedNgramFeaturizer:
    """Callable: list of texts -> float32 [N, num_features]. Also gives the sparse form for training."""

    def __init__(self, options: HashedNgramOptions) -> None:
        self.options = options
        self.num_features = options.num_features
        # Cached per distinct word: its unigram and character n-gram buckets.
        self._word_buckets = lru_cache(maxsize=1 << 16)(self._buckets_of_word)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows, cols, values = self.sparse(texts)
        out = np.zeros((len(texts), self.num_features), dtype=np.float32)
        out[rows, cols] = values
        return out

    def sparse(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """COO triplets (row int64, column int64, value float32), one entry per non-empty bucket."""
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"text #{i} is {type(text).__name__}, not str")
            buckets, counts = np.unique(self.buckets(text), return_counts=True)
            rows.append(np.full(buckets.size, i, dtype=np.int64))
            cols.append(buckets)
            values.append((1.0 + np.log(counts)).astype(np.float32))
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)

    def buckets(self, text: str) -> np.ndarray:
        """Bucket of every feature occurrence in `text` (with repeats), int64."""
        words = _WORD.findall(text.lower())
        parts: list[int] = []
        for word in words:
            parts.extend(self._word_buckets(word))
        low, high = self.options.word_ngrams
        if high >= 2:
            padded = [_START, *words, _END]
            for n in range(max(low, 2), high + 1):
                for j in range(len(padded) - n + 1):
                    parts.append(self._bucket("w" + " ".join(padded[j : j + n])))
        return np.asarray(parts, dtype=np.int64)

    def _buckets_of_word(self, word: str) -> tuple[int, ...]:
        out: list[int] = []
        if self.options.word_ngrams[0] == 1:
            out.append(self._bucket("w" + word))
        low, high = self.options.char_ngrams
        if high:
            padded = f" {word} "
            for n in range(low, high + 1):
                for j in range(len(padded) - n + 1):
                    out.append(self._bucket("c" + padded[j : j + n]))
        return tuple(out)

    def _bucket(self, feature: str) -> int:
        return zlib.crc32(feature.encode("utf-8")) % self.num_features


def parse_featurizer_options(options: Mapping) -> HashedNgramOptions:
    """Validated featurizer options, or a ConfigError naming the bad field."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"featurizer options must be a mapping, got {type(options).__name__}")
    kind = options.get("kind", "hashed_ngrams")
    if kind != "hashed_ngrams":
        raise ConfigError(f"unknown featurizer kind {kind!r}; this version knows 'hashed_ngrams'")
    try:
        return HashedNgramOptions.model_validate(dict(options))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ConfigError(f"featurizer option {where!r}: {err['msg']}") from None


def featurizer_from_options(options: Mapping) -> Callable[[Sequence[str]], np.ndarray]:
    """The featurizer a model card's `options["featurizer"]` describes."""
    return HashedNgramFeaturizer(parse_featurizer_options(options))
