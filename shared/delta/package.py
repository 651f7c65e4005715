"""Build a signed delta package (cloud side) and verify-and-apply one (agent side).

Agent order, each step refusing with its own UpdateRejectedError subclass:
signature -> manifest fields, model, expiry, version -> payload length and chunk hashes ->
base hash on disk, apply and result hash (all three in a child process, at a low priority).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from shared.delta.apply_worker import ResidentApplyWorker, lower_priority, worker_command
from shared.delta.chunks import chunk_hashes, verify_payload
from shared.delta.golden import Golden
from shared.delta.install import temp_path_for
from shared.delta.manifest import DEFAULT_CHUNK_BYTES, Manifest, SignedManifest, parse_manifest, sign_manifest, verify_manifest
from shared.delta.payload import build_payload, mapped_file, read_header
from shared.errors import (
    ApplyFailedError,
    InvalidInputError,
    ResultHashMismatchError,
    UpdateRejectedError,
    WrongBaseError,
)

DEFAULT_APPLY_TIMEOUT_S = 600.0


class DeltaPackage(NamedTuple):
    """What the cloud publishes: the signed manifest envelope and the payload bytes."""

    signed_manifest: bytes
    payload: bytes

    @property
    def manifest(self) -> Manifest:
        return parse_manifest(SignedManifest.from_bytes(self.signed_manifest).manifest_bytes)


@dataclass(frozen=True)
class AppliedUpdate:
    manifest: Manifest
    path: Path
    """The verified target file (not yet installed)."""


def build_package(
    base_path: str | Path,
    target_path: str | Path,
    *,
    model_name: str,
    version: int,
    signing_key: Ed25519PrivateKey,
    expires_in_s: float,
    golden: Optional[Golden] = None,
    policy: Optional[dict[str, Any]] = None,
    card: Optional[dict[str, Any]] = None,
    rollback: bool = False,
    file_name: Optional[str] = None,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    now: Optional[float] = None,
) -> DeltaPackage:
    """Diff `base_path` -> `target_path` and sign a manifest for the payload."""
    if expires_in_s <= 0:
        raise InvalidInputError(f"expires_in_s must be positive, got {expires_in_s}")
    payload, _ = build_payload(base_path, target_path)
    header, _ = read_header(payload)
    issued_at = int(time.time() if now is None else now)
    fields = dict(
        model_name=model_name,
        version=version,
        rollback=rollback,
        file=file_name or Path(base_path).name,
        base_sha256=file_sha256(base_path),
        base_size=os.path.getsize(base_path),
        target_sha256=file_sha256(target_path),
        target_size=os.path.getsize(target_path),
        patch_format=header["format"],
        payload_size=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        chunk_size=chunk_size,
        chunk_sha256=chunk_hashes(payload, chunk_size),
        issued_at=issued_at,
        expires_at=issued_at + max(1, int(expires_in_s)),
        golden=golden,
        policy=policy,
        card=card,
    )
    try:
        manifest = Manifest(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInputError(f"cannot build manifest: field {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None
    return DeltaPackage(sign_manifest(manifest, signing_key).to_bytes(), payload)


def payload_summary(payload: bytes) -> dict[str, Any]:
    """What a payload holds: format, and per tensor its name, method and bytes sent."""
    header, (body_start, body_end) = read_header(payload)
    summary: dict[str, Any] = {"format": header["format"], "payload_bytes": len(payload), "body_bytes": body_end - body_start}
    if header["format"] == "tensor":
        summary["layout"] = header.get("layout")
        summary["glue"] = {"method": header["glue"]["method"], "bytes": header["glue"].get("len", 0)}
        summary["tensors"] = [
            {"name": t["name"], "method": t["method"], "length": t["length"], "bytes": t.get("len", 0)}
            for t in header["tensors"]
        ]
    return summary


def verify_and_apply(
    manifest_bytes: bytes,
    signature: bytes,
    payload: bytes | str | Path,
    base_path: str | Path,
    public_key: Ed25519PublicKey,
    *,
    active_version: Optional[int],
    now: Optional[float] = None,
    out_path: str | Path,
    model_name: Optional[str] = None,
    apply_timeout_s: float = DEFAULT_APPLY_TIMEOUT_S,
) -> AppliedUpdate:
    """Run every check in order and write the verified target file to `out_path`.

    `payload` is the whole payload (bytes) or the path of a file holding it. On any refusal
    nothing is left at `out_path`.
    """
    manifest = verify_manifest(
        manifest_bytes, signature, public_key,
        active_version=active_version, now=time.time() if now is None else now, model_name=model_name,
    )
    if isinstance(payload, (bytes, bytearray, memoryview)):
        verify_payload(manifest, payload)
        payload_path = temp_path_for(out_path)
        try:
            payload_path.write_bytes(payload)
            return apply_verified(manifest, payload_path, base_path, out_path, timeout_s=apply_timeout_s)
        finally:
            payload_path.unlink(missing_ok=True)
    with mapped_file(payload) as mapped:
        verify_payload(manifest, mapped)
    return apply_verified(manifest, Path(payload), base_path, out_path, timeout_s=apply_timeout_s)


def apply_verified(
    manifest: Manifest,
    payload_path: str | Path,
    base_path: str | Path,
    out_path: str | Path,
    *,
    timeout_s: float = DEFAULT_APPLY_TIMEOUT_S,
    priority: str = "normal",
    worker: Optional[ResidentApplyWorker] = None,
) -> AppliedUpdate:
    """The steps after the payload is verified: base hash, apply in a child, result hash.
    The child is `worker` (a resident one, already started) when given, else a new
    one-shot child at `priority` (see `lower_priority`).

    The hashing runs in the child, at its priority, not in the caller's process (an agent
    serving beside it): the child checks the base file against the manifest's base hash
    before it reads it for the patch, and hashes the target as it writes it; its reported
    size and SHA-256 must be the manifest's."""
    out_path = Path(out_path)
    if not Path(base_path).is_file():
        raise WrongBaseError(f"base file {base_path} does not exist")
    try:
        if worker is not None:
            size, result = _raise_for_reply(worker.apply(payload_path, base_path, out_path,
                                                         payload_sha256=manifest.payload_sha256,
                                                         base_sha256=manifest.base_sha256, timeout_s=timeout_s), None, None)
        else:
            size, result = apply_in_subprocess(
                payload_path, base_path, out_path,
                payload_sha256=manifest.payload_sha256, base_sha256=manifest.base_sha256, timeout_s=timeout_s,
                priority=priority,
            )
        if result != manifest.target_sha256 or size != manifest.target_size:
            raise ResultHashMismatchError(
                f"patched file has SHA-256 {result[:16]}... ({size} bytes), manifest states "
                f"{manifest.target_sha256[:16]}... ({manifest.target_size} bytes)"
            )
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    return AppliedUpdate(manifest, out_path)


def apply_in_subprocess(
    payload_path: str | Path,
    base_path: str | Path,
    out_path: str | Path,
    *,
    payload_sha256: Optional[str] = None,
    base_sha256: Optional[str] = None,
    timeout_s: float = DEFAULT_APPLY_TIMEOUT_S,
    priority: str = "normal",
) -> tuple[int, str]:
    """Apply in `python -m shared.delta.apply_worker`; returns (size, sha256) of the written file.
    The child runs at `priority` (see `lower_priority`).

    Raises the worker's rejection as its own UpdateRejectedError subclass, and
    ApplyFailedError when the child crashes, prints nonsense or runs past `timeout_s`.
    """
    args = ["--payload", str(payload_path), "--base", str(base_path), "--out", str(out_path)]
    if payload_sha256:
        args += ["--payload-sha256", payload_sha256]
    if base_sha256:
        args += ["--base-sha256", base_sha256]
    cmd, env = worker_command(*args)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        lower_priority(proc.pid, priority)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise ApplyFailedError(f"applying the patch took longer than {timeout_s:g} s; child killed") from None
    lines = stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else None
    except ValueError:
        reply = None
    return _raise_for_reply(reply, proc.returncode, stderr)


def _raise_for_reply(reply: Any, returncode: Optional[int], stderr: Optional[str]) -> tuple[int, str]:
    """(size, sha256) from an apply worker's reply, or its refusal raised as its own error."""
    if returncode in (0, None) and isinstance(reply, dict) and "sha256" in reply:
        return int(reply["size"]), str(reply["sha256"])
    if isinstance(reply, dict) and "reason" in reply:
        raise rejection_for(str(reply["reason"]), str(reply.get("message", "")))
    if returncode is None:
        raise ApplyFailedError(f"apply worker answered without a result: {str(reply)[:200]}")
    detail = (stderr or "").strip().splitlines()[-1:] or ["no output"]
    raise ApplyFailedError(f"apply worker exited with status {returncode}: {detail[0]}")


def rejection_for(reason: str, message: str) -> UpdateRejectedError:
    """The UpdateRejectedError subclass for a reason string (ApplyFailedError when unknown)."""
    for cls in UpdateRejectedError.__subclasses__():
        if cls.reason == reason:
            return cls(message)
    return ApplyFailedError(f"{reason}: {message}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
