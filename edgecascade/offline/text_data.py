"""Labelled text CSVs for `edgecascade train` and `bench cascade` (BANKING77 by default).

A CSV has a header with a `text` column and a label column named `category` (BANKING77's
name) or `label`; when both exist, `category` is used. Every row needs a non-blank text and
label. Errors name the file, the row (1 = first row after the header) and its line.

The default data directory is `$EDGECASCADE_DATA_DIR`, else `../shared/data/banking77`
next to the repository (resolved from this package's location, not the working directory).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from shared.errors import ConfigError, InvalidInputError

DATA_DIR_ENV = "EDGECASCADE_DATA_DIR"
TEXT_COLUMN = "text"
LABEL_COLUMNS = ("category", "label")
TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"
#: Label names taken as "out of scope" when a data set has one and none is named.
OUT_OF_SCOPE_NAMES = ("out_of_scope", "oos")


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[str]
    """Label names, one per text."""
    source: str
    """Where it came from, for messages."""

    def __len__(self) -> int:
        return len(self.texts)

    def label_ids(self, label_names: Sequence[str], out_of_scope_label: Optional[str] = None) -> np.ndarray:
        """int64 [N] indices into `label_names`; an unknown label is an InvalidInputError naming it,
        except `out_of_scope_label`, which is -1 when it is not one of `label_names`."""
        index = {name: i for i, name in enumerate(label_names)}
        if out_of_scope_label is not None and out_of_scope_label not in index:
            index[out_of_scope_label] = -1
        ids = np.empty(len(self.labels), dtype=np.int64)
        for row, label in enumerate(self.labels):
            if label not in index:
                raise InvalidInputError(
                    f"{self.source} row {row + 1}: label {label!r} does not occur in the training data "
                    f"({len(label_names)} labels)"
                )
            ids[row] = index[label]
        return ids

    def out_of_scope(self, out_of_scope_label: Optional[str]) -> np.ndarray:
        """bool [N]: rows labelled `out_of_scope_label` (all False for None)."""
        return np.array([label == out_of_scope_label for label in self.labels], dtype=bool)

    def subset(self, rows: Sequence[int]) -> "LabelledTexts":
        return LabelledTexts([self.texts[i] for i in rows], [self.labels[i] for i in rows], self.source)


def default_data_dir() -> Path:
    """$EDGECASCADE_DATA_DIR, else <repository>/../shared/data/banking77."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / "banking77"


def data_files(data_dir: Optional[str | Path]) -> tuple[Path, Path]:
    """(train.csv, test.csv) in `data_dir` (default: `default_data_dir()`), both required."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    paths = (folder / TRAIN_FILE, folder / TEST_FILE)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        hint = "" if data_dir is not None else f" (set {DATA_DIR_ENV} or pass --data-dir)"
        raise ConfigError(f"data directory {folder} lacks {', '.join(missing)}{hint}")
    return paths


def read_labelled_csv(path: str | Path, *, max_chars: Optional[int] = None) -> LabelledTexts:
    """Read and check a labelled CSV (see the module docstring)."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"data file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read data file {path}: {exc}") from None
    texts: list[str] = []
    labels: list[str] = []
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise InvalidInputError(f"{path} is empty; expected a header with columns {TEXT_COLUMN!r} and one of {LABEL_COLUMNS}")
            columns = [name.strip().lstrip("\ufeff") for name in header]
            text_at, label_at = _column_positions(path, columns)
            for row_number, row in enumerate(reader, start=1):
                if not row:
                    continue  # a blank line
                where = f"{path} row {row_number} (line {reader.line_num})"
                if len(row) != len(columns):
                    raise InvalidInputError(f"{where}: {len(row)} fields, the header has {len(columns)}")
                text, label = row[text_at], row[label_at].strip()
                if not text.strip():
                    raise InvalidInputError(f"{where}: text is empty")
                if not label:
                    raise InvalidInputError(f"{where}: label is empty")
                if max_chars is not None and len(text) > max_chars:
                    raise InvalidInputError(f"{where}: text is {len(text)} characters; at most {max_chars} are allowed")
                texts.append(text)
                labels.append(label)
        except csv.Error as exc:
            raise InvalidInputError(f"{path} line {reader.line_num}: not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not texts:
        raise InvalidInputError(f"{path} has a header but no rows")
    return LabelledTexts(texts, labels, str(path))


def _column_positions(path: Path, columns: list[str]) -> tuple[int, int]:
    if TEXT_COLUMN not in columns:
        raise InvalidInputError(f"{path}: no {TEXT_COLUMN!r} column; the header has {columns}")
    label_name = next((name for name in LABEL_COLUMNS if name in columns), None)
    if label_name is None:
        raise InvalidInputError(f"{path}: no label column ({' or '.join(map(repr, LABEL_COLUMNS))}); the header has {columns}")
    return columns.index(TEXT_COLUMN), columns.index(label_name)


def find_out_of_scope_label(*sets: LabelledTexts, named: Optional[str] = None) -> Optional[str]:
    """The out-of-scope label: `named` (it must occur in one of the sets), else the first of
    OUT_OF_SCOPE_NAMES that occurs, else None."""
    present = set().union(*(set(s.labels) for s in sets))
    if named is not None:
        if named not in present:
            raise InvalidInputError(f"out-of-scope label {named!r} occurs in none of {', '.join(s.source for s in sets)}")
        return named
    return next((name for name in OUT_OF_SCOPE_NAMES if name in present), None)


def label_names(train: LabelledTexts) -> list[str]:
    """The training labels, sorted; at least two are needed for a classifier."""
    names = sorted(set(train.labels))
    if len(names) < 2:
        raise InvalidInputError(f"{train.source}: a classifier needs at least 2 labels, found {names}")
    return names
