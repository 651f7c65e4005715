"""Where the command line writes files: checked before any work starts, so a missing or
unwritable directory is a one-line ConfigError and not a traceback after a long build."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shared.errors import ConfigError


def _probe_write(directory: Path, what: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".edgecascade-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {directory}: {exc.strerror or exc}") from None


def prepare_output_dir(path: str | Path, what: str) -> Path:
    """Create `path` (and its parents) if needed and check that files can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot create directory {path}: {exc.strerror or exc}") from None
    _probe_write(path, what)
    return path


def check_output_file(path: str | Path, what: str) -> Path:
    """`path` may be written: its directory exists and is writable (it is not created here)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise ConfigError(f"{what}: directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise ConfigError(f"{what}: {parent} is not a directory")
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a directory, expected a file name")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: cannot write in {parent}: permission denied")
    _probe_write(parent, what)
    return path
