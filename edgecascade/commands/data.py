"""`edgecascade data synth|holdout`: make intent data sets in the CSV form `train` and `bench cascade` read."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="make intent data sets: a synthetic one, or held-out intents as out of scope")
    data_sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = data_sub.add_parser(
        "synth", help="write a SYNTHETIC intent data set generated from templates (tests, trying things out)",
        description="Write train.csv and test.csv of a generated intent data set (edgecascade/offline/synthetic_intents.py). "
        "It is synthetic: results on it say nothing about real traffic.")
    synth.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    synth.add_argument("--intents", type=int, default=8, help="number of intents, 2..12 (default 8)")
    synth.add_argument("--train-per-intent", type=int, default=60, metavar="N", help="training texts per intent (default 60)")
    synth.add_argument("--test-per-intent", type=int, default=20, metavar="N", help="test texts per intent (default 20)")
    synth.add_argument("--out-of-scope", type=int, default=0, metavar="N",
                       help="test texts from unrelated topics, labelled out_of_scope (default 0)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(func=_synth)

    holdout = data_sub.add_parser(
        "holdout", help="hold some intents of a data set out as out-of-scope test queries",
        description="Copy a data set (train.csv, test.csv) with some intents held out: they leave the training "
        "data and their test texts are relabelled out_of_scope (edgecascade/offline/holdout_intents.py).")
    holdout.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                         help="source data (default: $EDGECASCADE_DATA_DIR or ../shared/data/banking77)")
    which = holdout.add_mutually_exclusive_group(required=True)
    which.add_argument("--intents", type=int, metavar="K", help="hold out K intents drawn with --seed")
    which.add_argument("--labels", metavar="A,B,...", help="hold out these intents")
    holdout.add_argument("--seed", type=int, default=0, help="random seed for --intents (default 0)")
    holdout.add_argument("--out", type=Path, required=True, metavar="DIR",
                         help="output directory; its name becomes the data set's name in benchmarks")
    holdout.set_defaults(func=_holdout)


def _command_line() -> str:
    return "edgecascade " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""


def _synth(args: argparse.Namespace) -> int:
    from edgecascade.offline.synthetic_intents import write_data_dir

    out = write_data_dir(args.out, seed=args.seed, intents=args.intents, train_per_intent=args.train_per_intent,
                         test_per_intent=args.test_per_intent, out_of_scope=args.out_of_scope,
                         command=_command_line())
    print(f"wrote a SYNTHETIC intent data set to {out} (train.csv, test.csv, README.md)")
    return 0


def _holdout(args: argparse.Namespace) -> int:
    from edgecascade.offline.holdout_intents import write_holdout_dir

    named = [name.strip() for name in args.labels.split(",") if name.strip()] if args.labels else None
    facts = write_holdout_dir(args.data_dir, args.out, count=args.intents, named=named, seed=args.seed,
                              command=_command_line())
    print(f"wrote {args.out}: {facts['in_scope_intents']} intents in scope, {len(facts['held_out'])} held out "
          f"({', '.join(facts['held_out'])}); test: {facts['test_size']} texts, {facts['test_out_of_scope']} out of scope")
    return 0
