"""An out-of-scope benchmark from any labelled intent data set: hold some intents out.

    edgecascade data holdout --data-dir DIR --intents 10 [--seed 0] [--out DIR-holdout10]
    edgecascade data holdout --data-dir DIR --labels lost_or_stolen_card,card_swallowed --out OUT

The chosen intents vanish from `train.csv`; their `test.csv` rows stay, relabelled
`out_of_scope`. A model trained on the rest has never seen them, so they are real queries that
match none of its labels: the out-of-scope setting of a confidence-threshold detector. They
come from the same domain as the kept intents (near out-of-scope), which is harder than queries
from unrelated topics. A README.md in the output names the source, the held-out intents and
the command.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Sequence

from edgecascade.offline.synthetic_intents import OUT_OF_SCOPE_LABEL, write_rows
from edgecascade.offline.text_data import data_files, read_labelled_csv
from shared.errors import InvalidInputError


def choose_intents(labels: Sequence[str], *, count: Optional[int] = None, named: Optional[Sequence[str]] = None,
                   seed: int = 0) -> list[str]:
    """The intents to hold out: `named` (checked), or `count` drawn with `seed`; at least 2 must stay."""
    labels = sorted(set(labels))
    if (count is None) == (named is None):
        raise InvalidInputError("give either a number of intents to hold out or their names")
    if named is not None:
        unknown = [name for name in named if name not in labels]
        if unknown:
            raise InvalidInputError(f"unknown intents {unknown}; the data set has {len(labels)} labels")
        chosen = sorted(set(named))
    else:
        if count < 1:
            raise InvalidInputError(f"the number of intents to hold out must be at least 1, got {count}")
        if count > len(labels) - 2:
            raise InvalidInputError(f"cannot hold out {count} of {len(labels)} intents: at least 2 must stay")
        chosen = sorted(random.Random(seed).sample(labels, count))
    if len(labels) - len(chosen) < 2:
        raise InvalidInputError(f"holding out {len(chosen)} of {len(labels)} intents leaves fewer than 2")
    if OUT_OF_SCOPE_LABEL in labels:
        raise InvalidInputError(f"the data set already has a label {OUT_OF_SCOPE_LABEL!r}")
    return chosen


def write_holdout_dir(data_dir: Optional[str | Path], out_dir: str | Path, *, count: Optional[int] = None,
                      named: Optional[Sequence[str]] = None, seed: int = 0, command: Optional[str] = None) -> dict:
    """Write the held-out data set to `out_dir`; return what was written."""
    train_path, test_path = data_files(data_dir)
    train, test = read_labelled_csv(train_path), read_labelled_csv(test_path)
    held_out = set(choose_intents(train.labels, count=count, named=named, seed=seed))
    out_dir = Path(out_dir)
    if out_dir.resolve() == train_path.parent.resolve():
        raise InvalidInputError(f"--out {out_dir} is the source data directory; choose another")
    out_dir.mkdir(parents=True, exist_ok=True)
    train_rows = [(t, label) for t, label in zip(train.texts, train.labels) if label not in held_out]
    test_rows = [(t, OUT_OF_SCOPE_LABEL if label in held_out else label) for t, label in zip(test.texts, test.labels)]
    write_rows(out_dir / "train.csv", train_rows)
    write_rows(out_dir / "test.csv", test_rows)
    n_oos = sum(label == OUT_OF_SCOPE_LABEL for _, label in test_rows)
    facts = {"source": str(train_path.parent), "held_out": sorted(held_out), "seed": seed,
             "train_size": len(train_rows), "test_size": len(test_rows), "test_out_of_scope": n_oos,
             "in_scope_intents": len(set(train.labels)) - len(held_out)}
    (out_dir / "README.md").write_text(
        f"# {out_dir.name}: {train_path.parent.name} with {len(held_out)} intents held out as out of scope\n\n"
        f"Derived from `{train_path.parent}` by `edgecascade data holdout` (`edgecascade/offline/holdout_intents.py`). "
        f"Training: {len(train_rows)} texts of {facts['in_scope_intents']} intents. Test: {len(test_rows)} texts, "
        f"of which {n_oos} are the held-out intents' test texts, labelled `{OUT_OF_SCOPE_LABEL}`.\n\n"
        f"Held-out intents: {', '.join(sorted(held_out))}.\n\n"
        "The source data's licence and attribution apply to this derived copy.\n"
        + (f"\nCommand: `{command}`\n" if command else "")
    )
    return facts
