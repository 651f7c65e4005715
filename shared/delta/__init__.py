"""Signed delta model updates: per-tensor diffs, an Ed25519-signed JSON manifest, chunked
verification, apply in a child process, and crash-safe install.

Cloud side:  `build_package(base, target, model_name=..., version=..., signing_key=..., expires_in_s=...)`
Agent side:  `verify_manifest` -> `PayloadAssembler` (chunks) -> `apply_verified` -> `install_file`,
             or `verify_and_apply` when the whole payload is at hand.
"""

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
    "AppliedUpdate", "DeltaPackage", "Golden", "Manifest", "PayloadAssembler", "SignedManifest",
    "apply_in_subprocess", "apply_verified", "atomic_write_bytes", "build_package", "check_golden",
    "chunk_hashes", "chunk_of", "file_sha256", "install_file", "keygen", "load_private_key", "load_public_key",
    "make_golden", "parse_manifest", "payload_summary", "previous_path", "remove_stale_temps",
    "restore_previous", "sign_manifest", "verify_and_apply", "verify_manifest", "verify_payload",
]
