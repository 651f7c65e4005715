"""The updater's directory: whole versioned bundles, an atomically replaced `current` pointer,
resumable downloads, and a journal for the update on probation.

    state_dir/
      current                 name of the serving version directory (replaced atomically)
      current.prev            the name before it (kept by `install_file`)
      versions/<name>/        complete bundles: model.json, weights file, policy.json
      staging/<update_id>/    a bundle being built; renamed into versions/ only when complete
      downloads/<update_id>.part   payload chunks verified so far
      journal.json            the update swapped in and still on probation

A directory appears under versions/ only by renaming a complete, fsynced staging directory,
and `current` changes only by an atomic rename, so after a crash at any point the agent finds
the old bundle or the new one, whole. Opening the store deletes staging/ and temp files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from shared.delta.install import atomic_write_bytes, fsync_dir, remove_stale_temps
from shared.delta.manifest import Manifest
from shared.errors import ConfigError
from shared.model_card import CARD_FILE, POLICY_FILE, load_card

log = logging.getLogger(__name__)

CURRENT, JOURNAL = "current", "journal.json"


def version_name(version: int, target_sha256: str) -> str:
    """Directory name of an installed version: its number and the start of its file hash."""
    return f"v{version}-{target_sha256[:12]}"


def fsync_tree(directory: Path) -> None:
    """fsync every file in `directory` (not recursive), then the directory itself."""
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(directory)


class VersionStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.staging = self.root / "staging"
        self.downloads = self.root / "downloads"

    # --- start-up -----------------------------------------------------------------------------

    def open(self, seed_bundle: Path, seed_policy: Optional[Path] = None) -> Path:
        """Clean up after a crash, seed from `seed_bundle` on first use; the serving bundle dir."""
        for directory in (self.root, self.versions, self.downloads):
            directory.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temps(self.root)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()
        if removed:
            log.info("removed %d temporary file(s) a crash left in %s", len(removed), self.root)
        name = self.current_name()
        seed_card = load_card(seed_bundle)
        if name is None or not (self.versions / name / CARD_FILE).exists():
            if name is not None:
                log.warning("%s names %s, which is not installed; seeding again from %s", self.root / CURRENT, name, seed_bundle)
            return self._seed(seed_bundle, seed_policy)
        card = load_card(self.versions / name)
        if card.name != seed_card.name:
            raise ConfigError(
                f"state_dir {self.root} serves model {card.name!r} but bundle_dir {seed_bundle} holds {seed_card.name!r}; "
                "point state_dir elsewhere or empty it"
            )
        return self.versions / name

    def _seed(self, bundle: Path, policy: Optional[Path]) -> Path:
        from shared.delta.package import file_sha256

        card = load_card(bundle)
        staging = self.new_staging("seed")
        shutil.copyfile(bundle / card.file, staging / card.file)
        shutil.copyfile(bundle / CARD_FILE, staging / CARD_FILE)
        shutil.copyfile(policy or bundle / POLICY_FILE, staging / POLICY_FILE)
        name = version_name(card.version, file_sha256(staging / card.file))
        self.install(staging, name)
        self.switch_to(name)
        log.info("seeded %s with %s v%d from %s", self.root, card.name, card.version, bundle)
        return self.versions / name

    # --- versions and the pointer -------------------------------------------------------------

    def current_name(self) -> Optional[str]:
        try:
            return (self.root / CURRENT).read_text().strip() or None
        except FileNotFoundError:
            return None

    def current_dir(self) -> Path:
        name = self.current_name()
        if name is None:
            raise ConfigError(f"{self.root} has no current version")
        return self.versions / name

    def new_staging(self, update_id: str) -> Path:
        staging = self.staging / update_id
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def install(self, staging: Path, name: str) -> Path:
        """Make a complete staging bundle an installed version (fsync, then one rename)."""
        fsync_tree(staging)
        dest = self.versions / name
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(staging, dest)
        fsync_dir(self.versions)
        fsync_dir(self.staging)
        return dest

    def installed(self, name: str) -> Optional[Path]:
        path = self.versions / name
        return path if (path / CARD_FILE).exists() else None

    def uninstall(self, name: str) -> None:
        if name != self.current_name():
            shutil.rmtree(self.versions / name, ignore_errors=True)

    def switch_to(self, name: str) -> None:
        """Point `current` at an installed version, atomically; the old name goes to current.prev."""
        if self.installed(name) is None:
            raise ConfigError(f"version {name} is not installed in {self.versions}")
        atomic_write_bytes(self.root / CURRENT, name.encode() + b"\n", keep_previous=True)

    def prune(self, keep: set[str]) -> None:
        """Delete installed versions not in `keep` (never the current one)."""
        keep = keep | {self.current_name()}
        for path in self.versions.iterdir():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    # --- downloads ----------------------------------------------------------------------------

    def part_path(self, update_id: str) -> Path:
        return self.downloads / f"{update_id}.part"

    def remove_downloads(self, keep: Optional[str] = None) -> None:
        for path in self.downloads.iterdir():
            if keep is None or path.name != f"{keep}.part":
                path.unlink(missing_ok=True)

    # --- journal ------------------------------------------------------------------------------

    def write_journal(self, entry: dict[str, Any]) -> None:
        atomic_write_bytes(self.root / JOURNAL, json.dumps(entry, sort_keys=True).encode())

    def read_journal(self) -> Optional[dict[str, Any]]:
        try:
            entry = json.loads((self.root / JOURNAL).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("unreadable %s removed", self.root / JOURNAL)
            self.clear_journal()
            return None
        return entry if isinstance(entry, dict) else None

    def clear_journal(self) -> None:
        (self.root / JOURNAL).unlink(missing_ok=True)
        fsync_dir(self.root)


def manifest_version_name(manifest: Manifest) -> str:
    return version_name(manifest.version, manifest.target_sha256)
