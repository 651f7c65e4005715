"""Fill an overlay's secrets/ folder with throwaway material for a test cluster.

    python3 deploy/k8s/dev_secrets.py deploy/k8s/overlays/dev [--host router.example.com]
    python3 deploy/k8s/dev_secrets.py deploy/k8s/overlays/prod --redis-url rediss://:PW@host:6380/0

Writes what the overlay's secretGenerator reads, made by `edgecascade certs init`'s code
(edgecascade/dev_pki.py): a dev CA and certificates in `secrets/pki/` (`ca.pem`, `ca.key`, and a
key and certificate each for a router, an agent, an admin and an app), of which the router's
TLS Secret takes `ca.crt` (the CA), `tls.crt` and `tls.key` (the router's, for its in-cluster
names, loopback and each --host). The agent, admin and app certificates stay in secrets/pki/
for the clients (mutual TLS: every caller needs one; `edgecascade certs issue --ca-dir
secrets/pki` makes more). Also an Ed25519 update-signing key pair (`update_key.pub.pem` goes
into a Secret; `update_key.pem`, the private half, stays here to sign pushes). With
--redis-url it also writes `redis.env` (prod's external Redis). Existing files are kept unless
--force; with an existing secrets/pki/ CA, a missing router certificate is issued from it.
Production should use its own CA and keep the private signing key off the cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edgecascade import dev_pki
from shared.delta.signing import keygen

ROUTER_NAMES = ["edgecascade-router", "localhost", "127.0.0.1"]
PKI_DIR = "pki"


def router_hosts(namespace: str, extra_hosts: list[str] = ()) -> list[str]:
    """The router certificate's names: the Service's short name first (what in-cluster clients
    and the probes check), its namespaced names, loopback, then `extra_hosts`."""
    return [ROUTER_NAMES[0], f"edgecascade-router.{namespace}.svc", f"edgecascade-router.{namespace}.svc.cluster.local",
            *ROUTER_NAMES[1:], *extra_hosts]


def make_tls(pki: Path, namespace: str, *, extra_hosts: list[str] = (), force: bool = False) -> dict[str, bytes]:
    """ca.crt, tls.crt and tls.key (PEM) for the router's Secret, from a dev CA in `pki` (made
    with every `certs init` certificate when missing or with `force`)."""
    hosts = router_hosts(namespace, list(extra_hosts))
    if force or not (pki / dev_pki.CA_KEY).exists():
        dev_pki.init(pki, force=True)
    router = dev_pki.issue(pki, "router", dev_pki.DEFAULT_HOLDERS["router"], hosts=hosts)
    return {"ca.crt": (pki / dev_pki.CA_CERT).read_bytes(), "tls.crt": router.cert_file.read_bytes(),
            "tls.key": router.key_file.read_bytes()}


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path`, created with `mode` (no moment with wider permissions)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def overlay_namespace(overlay: Path) -> str:
    import yaml

    return yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("namespace", "default")


def fill(overlay: Path, *, redis_url: str | None = None, force: bool = False,
         extra_hosts: list[str] = ()) -> list[Path]:
    """Write the missing secret files of `overlay`; returns the files written."""
    if not (overlay / "kustomization.yaml").is_file():
        raise SystemExit(f"{overlay} holds no kustomization.yaml: name an overlay folder")
    secrets = overlay / "secrets"
    secrets.mkdir(exist_ok=True)
    written = []
    if force or not (secrets / "tls.crt").exists():
        tls = make_tls(secrets / PKI_DIR, overlay_namespace(overlay), extra_hosts=extra_hosts, force=force)
        written.append(secrets / PKI_DIR)
        for name, data in tls.items():
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
    parser.add_argument("--host", action="append", default=[],
                        help="one more name (or IP) on the router certificate, e.g. its external name (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace existing files (and the dev CA)")
    args = parser.parse_args(argv)
    for path in fill(args.overlay, redis_url=args.redis_url, force=args.force, extra_hosts=args.host):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
