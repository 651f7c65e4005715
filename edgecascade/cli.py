"""The `edgecascade` command line. Each subcommand lives in `edgecascade/commands/<name>.py`
and exposes `register(subparsers)`; this module only assembles them and turns typed errors
into one-line messages with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from shared.errors import EdgecascadeError

#: Subcommand modules, in the order `--help` lists them.
COMMANDS = ("edge", "cloud", "demo", "data", "train", "calibrate", "bench", "update", "fleet", "certs")


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" outside an install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgecascade")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecascade",
        description="Edge-cloud cascade inference: run the daemons, the demo, calibration and benchmarks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--version", action="version", version=f"edgecascade {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"edgecascade.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgecascade.commands.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except EdgecascadeError as exc:
        print(f"edgecascade {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
