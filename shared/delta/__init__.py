"""Signed delta model updates: per-tensor diffs, an Ed25519-signed JSON manifest, chunked
verification, apply in a child process (per update, or one resident worker), and crash-safe
install.

Cloud side:  `build_package(base, target, model_name=..., version=..., signing_key=..., expires_in_s=...)`
Agent side:  `verify_manifest` -> `PayloadAssembler` (chunks) -> `apply_verified` -> `install_file`,
             or `verify_and_apply` when the whole payload is at hand.
"""

import importlib
from typing import TYPE_CHECKING

#: Where each public name lives. Imported on first use (PEP 562), so a process that needs one
#: module (the apply worker: payload only) does not pay for pydantic, cryptography and grpc.
_HOMES = {
    "PayloadAssembler": "chunks", "chunk_hashes": "chunks", "chunk_of": "chunks", "verify_payload": "chunks",
    "Golden": "golden", "check_golden": "golden", "make_golden": "golden",
    "atomic_write_bytes": "install", "install_file": "install", "previous_path": "install",
    "remove_stale_temps": "install", "restore_previous": "install",
    "Manifest": "manifest", "SignedManifest": "manifest", "parse_manifest": "manifest",
    "sign_manifest": "manifest", "verify_manifest": "manifest",
    "AppliedUpdate": "package", "DeltaPackage": "package", "apply_in_subprocess": "package",
    "apply_verified": "package", "build_package": "package", "file_sha256": "package",
    "payload_summary": "package", "verify_and_apply": "package",
    "ResidentApplyWorker": "apply_worker",
    "keygen": "signing", "load_private_key": "signing", "load_public_key": "signing",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from shared.delta.apply_worker import ResidentApplyWorker
    from shared.delta.chunks import PayloadAssembler, chunk_hashes, chunk_of, verify_payload
    from shared.delta.golden import Golden, check_golden, make_golden
    from shared.delta.install import atomic_write_bytes, install_file, previous_path, remove_stale_temps, restore_previous
    from shared.delta.manifest import Manifest, SignedManifest, parse_manifest, sign_manifest, verify_manifest
    from shared.delta.package import (
        AppliedUpdate,
        DeltaPackage,
        apply_in_subprocess,
        apply_verified,
        build_package,
        file_sha256,
        payload_summary,
        verify_and_apply,
    )
    from shared.delta.signing import keygen, load_private_key, load_public_key

__all__ = [
    "AppliedUpdate", "DeltaPackage", "Golden", "Manifest", "PayloadAssembler", "ResidentApplyWorker", "SignedManifest",
    "apply_in_subprocess", "apply_verified", "atomic_write_bytes", "build_package", "check_golden",
    "chunk_hashes", "chunk_of", "file_sha256", "install_file", "keygen", "load_private_key", "load_public_key",
    "make_golden", "parse_manifest", "payload_summary", "previous_path", "remove_stale_temps",
    "restore_previous", "sign_manifest", "verify_and_apply", "verify_manifest", "verify_payload",
]
