"""Ed25519 keys as PEM files, and signing/verifying manifest bytes.

The cloud holds the private key; every agent pins the public key. A signature covers the
exact manifest bytes, so the agent verifies before it parses anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import BadSignatureError, ConfigError

SIGNATURE_BYTES = 64


def keygen(private_path: str | Path, public_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: PKCS#8 private PEM (mode 0600) and SubjectPublicKeyInfo PEM.

    Refuses to overwrite an existing private key.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"private key {private_path} already exists; not overwriting it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read an unencrypted Ed25519 private key PEM, naming the file on any problem."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: key is {type(key).__name__}, expected Ed25519")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key PEM, naming the file on any problem."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: key is {type(key).__name__}, expected Ed25519")
    return key


def sign(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    return private_key.sign(message)


def verify_signature(public_key: Ed25519PublicKey, message: bytes, signature: bytes) -> None:
    """Raise BadSignatureError unless `signature` is a valid Ed25519 signature of `message`."""
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignatureError(f"signature is {len(signature)} bytes; Ed25519 signatures are {SIGNATURE_BYTES}")
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise BadSignatureError("manifest signature does not verify against the pinned public key") from None


def _read_key_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} not found") from None
