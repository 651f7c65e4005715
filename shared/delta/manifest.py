"""The update manifest (JSON), its signed envelope, and the checks made on it before any download.

A manifest names the model and version, the base and target files by SHA-256, and the patch
payload by total length, whole SHA-256 and one SHA-256 per fixed-size chunk (so an agent can
download in resumable chunks and check each one). It carries golden inputs and the policy
that belongs to the new model. The signature covers the exact manifest bytes.

Envelope (what travels): JSON `{"manifest": <base64 manifest bytes>, "signature": <base64>}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.delta.golden import Golden
from shared.delta.signing import sign, verify_signature
from shared.errors import BadManifestError, BadSignatureError, ExpiredUpdateError, StaleVersionError, WrongModelError

MANIFEST_FORMAT = "edgecascade.delta/1"
DEFAULT_CHUNK_BYTES = 256 << 10
_SHA256 = r"^[0-9a-f]{64}$"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["edgecascade.delta/1"] = MANIFEST_FORMAT
    model_name: str = Field(min_length=1)
    version: int = Field(ge=1)
    """Monotonic; agents refuse a version <= the active one unless `rollback` is set."""
    rollback: bool = False
    """An explicit, signed rollback: allows a version at or below the active one."""
    file: str = Field(default="model.onnx", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    """Name of the weights file inside the bundle that the payload patches (a plain name, no path)."""
    base_sha256: str = Field(pattern=_SHA256)
    base_size: int = Field(ge=0)
    target_sha256: str = Field(pattern=_SHA256)
    target_size: int = Field(ge=0)
    patch_format: Literal["tensor", "bsdiff4", "zstd"]
    payload_size: int = Field(ge=1)
    payload_sha256: str = Field(pattern=_SHA256)
    chunk_size: int = Field(ge=1)
    chunk_sha256: list[str]
    """SHA-256 of each `chunk_size` slice of the payload; the last may be shorter."""
    issued_at: int
    """Unix seconds."""
    expires_at: int
    """Unix seconds; agents refuse the manifest at or after this time."""
    golden: Optional[Golden] = None
    policy: Optional[dict[str, Any]] = None
    """Contents of the `policy.json` that belongs to the new model."""
    card: Optional[dict[str, Any]] = None
    """Contents of the new `model.json`, when the bundle's card changes too."""

    @model_validator(mode="after")
    def _chunks(self) -> "Manifest":
        want = math.ceil(self.payload_size / self.chunk_size)
        if len(self.chunk_sha256) != want:
            raise ValueError(f"{len(self.chunk_sha256)} chunk hashes for {self.payload_size} bytes in {self.chunk_size}-byte chunks (need {want})")
        if any(len(h) != 64 or h.strip("0123456789abcdef") for h in self.chunk_sha256):
            raise ValueError("chunk_sha256 holds a value that is not a lowercase SHA-256 hex digest")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at is not after issued_at")
        return self

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_sha256)

    def chunk_length(self, index: int) -> int:
        """Length of chunk `index` (the last one may be short)."""
        return min(self.chunk_size, self.payload_size - index * self.chunk_size)

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (sorted keys, no spaces): what gets signed."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SignedManifest:
    manifest_bytes: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "manifest": base64.b64encode(self.manifest_bytes).decode(),
                "signature": base64.b64encode(self.signature).decode(),
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SignedManifest":
        """Parse an envelope; a malformed one counts as a bad signature (nothing verifiable)."""
        try:
            raw = json.loads(data)
            return cls(
                base64.b64decode(raw["manifest"], validate=True),
                base64.b64decode(raw["signature"], validate=True),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise BadSignatureError(f"signed manifest envelope is malformed: {type(exc).__name__}: {exc}") from None


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    data = manifest.to_bytes()
    return SignedManifest(data, sign(private_key, data))


def parse_manifest(manifest_bytes: bytes) -> Manifest:
    """Parse manifest bytes (call only after the signature verified)."""
    try:
        return Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise BadManifestError(f"manifest field {where!r}: {err['msg']}") from None


def verify_manifest(
    manifest_bytes: bytes,
    signature: bytes,
    public_key: Ed25519PublicKey,
    *,
    active_version: Optional[int],
    now: float,
    model_name: Optional[str] = None,
) -> Manifest:
    """Signature, then schema, model name, expiry and version. Cheap: run before downloading.

    `active_version` None means no model is installed yet (any version is accepted).
    """
    verify_signature(public_key, manifest_bytes, signature)
    manifest = parse_manifest(manifest_bytes)
    if model_name is not None and manifest.model_name != model_name:
        raise WrongModelError(f"update is for model {manifest.model_name!r}, the agent runs {model_name!r}")
    if now >= manifest.expires_at:
        raise ExpiredUpdateError(
            f"manifest for {manifest.model_name!r} v{manifest.version} expired at {manifest.expires_at} (now {int(now)})"
        )
    if active_version is not None and manifest.version <= active_version and not manifest.rollback:
        raise StaleVersionError(
            f"update to {manifest.model_name!r} v{manifest.version} is not above active v{active_version} "
            "and is not a signed rollback"
        )
    return manifest
