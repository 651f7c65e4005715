"""Crash-safe file installation: a reader of `dest` sees the old file or the new one, never a mix.

New content goes to a temporary file in the same directory, is fsynced, renamed over the
destination with `os.replace` (atomic on POSIX), and the directory is fsynced so the rename
itself survives a power cut. The file it replaces is kept as `<dest>.prev` (a hard link to
the old inode, so keeping it costs no copy).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

from shared.errors import ConfigError

PREVIOUS_SUFFIX = ".prev"
_TEMP_MARK = ".tmp-"


def previous_path(dest: str | Path) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + PREVIOUS_SUFFIX)


def temp_path_for(dest: str | Path) -> Path:
    """A fresh temporary name next to `dest` (same filesystem, so the rename is atomic)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(dest: str | Path, data: bytes, *, keep_previous: bool = False) -> Optional[Path]:
    """Write `data` to `dest` atomically; returns the `.prev` path when one was kept."""
    tmp = temp_path_for(dest)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return install_file(tmp, dest, keep_previous=keep_previous)
    finally:
        tmp.unlink(missing_ok=True)


def install_file(new_file: str | Path, dest: str | Path, *, keep_previous: bool = True) -> Optional[Path]:
    """Move `new_file` onto `dest` atomically, keeping the replaced file as `<dest>.prev`.

    `new_file` is consumed. If it lives in another directory it is first copied next to `dest`.
    Returns the `.prev` path when a previous file was kept.
    """
    new_file, dest = Path(new_file), Path(dest)
    directory = dest.parent
    if new_file.parent.resolve() != directory.resolve():
        staged = temp_path_for(dest)
        shutil.copyfile(new_file, staged)
        new_file.unlink()
        new_file = staged
    with open(new_file, "rb+") as f:
        os.fsync(f.fileno())
    kept = None
    if keep_previous and dest.exists():
        kept = _keep_previous(dest)
    os.replace(new_file, dest)
    fsync_dir(directory)
    return kept


def restore_previous(dest: str | Path) -> None:
    """Swap `dest` and `<dest>.prev` (a rollback); each name always holds a complete file."""
    dest = Path(dest)
    prev = previous_path(dest)
    if not prev.exists():
        raise ConfigError(f"no previous version {prev} to restore")
    tmp = temp_path_for(dest)
    os.link(dest, tmp)
    try:
        os.replace(prev, dest)
        os.replace(tmp, prev)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temporary files a crashed install left in `directory`; returns what was removed."""
    removed = []
    for path in Path(directory).iterdir():
        if path.name.startswith(".") and _TEMP_MARK in path.name and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _keep_previous(dest: Path) -> Path:
    prev = previous_path(dest)
    tmp = temp_path_for(dest)
    try:
        os.link(dest, tmp)
    except OSError:
        shutil.copyfile(dest, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, prev)
    return prev
