"""Command-line options for reaching a daemon securely: TLS files and a bearer token.

Each falls back to an environment variable, so an operator sets them once:
`EDGECASCADE_TLS_CA`, `EDGECASCADE_TLS_CERT`, `EDGECASCADE_TLS_KEY`, `EDGECASCADE_TOKEN_FILE`.
Without TLS files the connection is plaintext; a token is then sent only with `--plaintext`,
so a token never crosses the network in clear by accident. The token itself is never an
argument (it would show in `ps`): it comes from a file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

from shared.errors import ConfigError
from shared.tls import ClientSecurity, read_token_file

ENV = {"tls_ca": "EDGECASCADE_TLS_CA", "tls_cert": "EDGECASCADE_TLS_CERT", "tls_key": "EDGECASCADE_TLS_KEY",
       "token_file": "EDGECASCADE_TOKEN_FILE"}


def add_client_security_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection security")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help=f"CA that the daemon's certificate must chain to; "
                       f"connects over TLS (env {ENV['tls_ca']})")
    group.add_argument("--tls-cert", type=Path, metavar="PEM",
                       help=f"client certificate for mutual TLS (env {ENV['tls_cert']})")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help=f"key of --tls-cert (env {ENV['tls_key']})")
    group.add_argument("--tls-server-name", metavar="NAME", help="host name to check the daemon's certificate against")
    group.add_argument("--token-file", type=Path, metavar="FILE",
                       help=f"file holding a bearer token to send (env {ENV['token_file']})")
    group.add_argument("--plaintext", action="store_true",
                       help="connect without TLS even though a token is given (the token travels in clear)")


def client_security(args: argparse.Namespace) -> Optional[ClientSecurity]:
    """The ClientSecurity the options (or their environment variables) describe; None: plaintext."""
    def value(name: str) -> Optional[Path]:
        given = getattr(args, name, None)
        if given is None and os.environ.get(ENV[name]):
            given = Path(os.environ[ENV[name]])
        return given

    ca, cert, key, token_file = value("tls_ca"), value("tls_cert"), value("tls_key"), value("token_file")
    token = read_token_file(token_file) if token_file else None
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if not (ca or cert):
        if token is not None and not args.plaintext:
            raise ConfigError("a token without TLS would travel in clear: give --tls-ca (and --tls-cert/--tls-key for "
                              "mutual TLS), or --plaintext to send it anyway")
        return ClientSecurity(token=token, tls=False) if token else None
    return ClientSecurity(ca_file=ca, cert_file=cert, key_file=key, token=token,
                          server_name=getattr(args, "tls_server_name", None))
