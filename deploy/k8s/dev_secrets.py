"""Fill an overlay's secrets/ folder with throwaway material for a test cluster.

    python3 deploy/k8s/dev_secrets.py deploy/k8s/overlays/dev
    python3 deploy/k8s/dev_secrets.py deploy/k8s/overlays/prod --redis-url rediss://:PW@host:6380/0

Writes what the overlay's secretGenerator reads: a self-signed CA (`ca.crt`), a server
certificate and key for the router's in-cluster names (`tls.crt`, `tls.key`), and an Ed25519
update-signing key pair (`update_key.pub.pem` goes into the Secret; `update_key.pem`, the
private half, stays here to sign pushes and is never part of a Secret). With --redis-url it
also writes `redis.env` (prod's external Redis). Existing files are kept unless --force.
Production should use its own CA and keep the private signing key off the cluster.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.delta.signing import keygen

ROUTER_NAMES = ["edgecascade-router", "localhost"]
VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_tls(namespace: str) -> dict[str, bytes]:
    """ca.crt, tls.crt and tls.key (PEM): a dev CA and a router certificate it signed."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("edgecascade dev CA")).issuer_name(_name("edgecascade dev CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names = ROUTER_NAMES + [f"edgecascade-router.{namespace}.svc", f"edgecascade-router.{namespace}.svc.cluster.local"]
    alt_names = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("edgecascade-router")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return {"ca.crt": ca.public_bytes(serialization.Encoding.PEM),
            "tls.crt": cert.public_bytes(serialization.Encoding.PEM),
            "tls.key": _pem_key(key)}


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path`, created with `mode` (no moment with wider permissions)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def overlay_namespace(overlay: Path) -> str:
    import yaml

    return yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("namespace", "default")


def fill(overlay: Path, *, redis_url: str | None = None, force: bool = False) -> list[Path]:
    """Write the missing secret files of `overlay`; returns the files written."""
    if not (overlay / "kustomization.yaml").is_file():
        raise SystemExit(f"{overlay} holds no kustomization.yaml: name an overlay folder")
    secrets = overlay / "secrets"
    secrets.mkdir(exist_ok=True)
    written = []
    if force or not (secrets / "tls.crt").exists():
        for name, data in make_tls(overlay_namespace(overlay)).items():
            _write(secrets / name, data, 0o600 if name.endswith(".key") else 0o644)
            written.append(secrets / name)
    if force or not (secrets / "update_key.pub.pem").exists():
        if force:
            (secrets / "update_key.pem").unlink(missing_ok=True)
        written += list(keygen(secrets / "update_key.pem", secrets / "update_key.pub.pem"))
    if redis_url is not None and (force or not (secrets / "redis.env").exists()):
        _write(secrets / "redis.env", f"url={redis_url}\n".encode(), 0o600)
        written.append(secrets / "redis.env")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overlay", type=Path, help="overlay folder, e.g. deploy/k8s/overlays/dev")
    parser.add_argument("--redis-url", help="write secrets/redis.env with this URL (the prod overlay needs it)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    for path in fill(args.overlay, redis_url=args.redis_url, force=args.force):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
