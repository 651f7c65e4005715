"""`edgecascade certs init|issue|revoke|crl` and `edgecascade token add|revoke`: credentials for
TLS, mutual TLS and bearer tokens, and revocation of certificates (README, "Security").

    edgecascade certs init --out certs [--host router.example.internal]
    edgecascade certs issue --ca-dir certs --name board-17 --role agent
    edgecascade certs revoke --ca-dir certs --name board-17      (or --cert FILE, --serial HEX)
    edgecascade certs crl --ca-dir certs                          (re-sign crl.pem before it expires)
    edgecascade token add --tokens-file tokens.yaml --name app-1 --role infer --out app-1.token
    edgecascade token revoke --tokens-file tokens.yaml --name app-1
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("certs", help="development CA and certificates for TLS and mutual TLS")
    certs_sub = parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = certs_sub.add_parser("init", help="a new dev CA with certificates for a router, an agent, an admin, an app")
    init.add_argument("--out", type=Path, default=Path("certs"), help="directory to write ca.pem and <name>.pem/.key into")
    _hosts_and_days(init)
    init.add_argument("--force", action="store_true", help="replace an existing CA in --out")
    init.set_defaults(func=_init)

    issue = certs_sub.add_parser("issue", help="one more certificate from an existing CA (a new holder, or a rotation)")
    issue.add_argument("--ca-dir", type=Path, default=Path("certs"), help="directory holding ca.pem and ca.key")
    issue.add_argument("--name", required=True, help="holder name (certificate common name and file name)")
    issue.add_argument("--role", action="append", default=[], choices=("infer", "agent", "admin"),
                       help="a role the certificate carries (repeat for several; none: a server-only certificate)")
    issue.add_argument("--out", type=Path, default=None, help="directory for <name>.pem and <name>.key (default --ca-dir)")
    _hosts_and_days(issue)
    issue.set_defaults(func=_issue)

    revoke = certs_sub.add_parser("revoke", help="put a certificate on the CA's revocation list (crl.pem), which "
                                                 "daemons with tls_crl_file enforce without a restart")
    revoke.add_argument("--ca-dir", type=Path, default=Path("certs"), help="directory holding ca.pem, ca.key, crl.pem")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", help="the certificate in <ca-dir>/<name>.pem")
    which.add_argument("--cert", type=Path, metavar="FILE", help="a certificate file this CA issued")
    which.add_argument("--serial", metavar="HEX", help="a serial number in hexadecimal (as daemons log it)")
    _crl_days(revoke)
    revoke.set_defaults(func=_revoke)

    crl = certs_sub.add_parser("crl", help="re-sign the CA's revocation list (crl.pem; created empty if missing) "
                                           "so that it does not expire")
    crl.add_argument("--ca-dir", type=Path, default=Path("certs"), help="directory holding ca.pem, ca.key, crl.pem")
    _crl_days(crl)
    crl.set_defaults(func=_crl)

    token = sub.add_parser("token", help="bearer tokens: add one (shown once) or revoke a holder's")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    add = token_sub.add_parser("add", help="make a token and list its SHA-256 in the tokens file")
    add.add_argument("--tokens-file", type=Path, required=True, help="the daemons' auth_tokens_file (created if missing)")
    add.add_argument("--name", required=True, help="holder name (shown in logs and used for per-client limits)")
    add.add_argument("--role", action="append", required=True, choices=("infer", "agent", "admin"),
                     help="a role of the token (repeat for several)")
    add.add_argument("--out", type=Path, default=None,
                     help="write the token to this file (mode 0600) instead of printing it")
    add.set_defaults(func=_token_add)
    revoke = token_sub.add_parser("revoke", help="remove every token of a holder from the tokens file")
    revoke.add_argument("--tokens-file", type=Path, required=True)
    revoke.add_argument("--name", required=True)
    revoke.set_defaults(func=_token_revoke)


def _hosts_and_days(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                        help="a host name or address the certificates serve, besides localhost, 127.0.0.1 and ::1 "
                             "(repeat for several)")
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates, in days")


def _crl_days(parser: argparse.ArgumentParser) -> None:
    # the default is dev_pki.CRL_DAYS, resolved when the command runs (building the parser does
    # not import `cryptography`)
    parser.add_argument("--days", type=int, default=None,
                        help="how long the written CRL is good for, in days (default 30); daemons refuse an expired "
                             "one at start, so re-sign it before then (`certs crl`)")


def _init(args: argparse.Namespace) -> int:
    from edgecascade.dev_pki import DEFAULT_HOSTS, init

    issued = init(args.out, hosts=[*DEFAULT_HOSTS, *args.host], days=args.days, force=args.force)
    print(f"wrote a dev CA to {args.out}/ca.pem (its key ca.key stays here: keep it secret)")
    for item in issued:
        print(f"  {item.cert_file} + {item.key_file.name}: {item.name}, roles: {', '.join(item.roles) or 'none (server)'}")
    print(f"  {args.out}/crl.pem: the CA's revocation list, empty (`certs revoke` adds to it)")
    print(f"router: tls_cert_file {args.out}/router.pem, tls_key_file {args.out}/router.key, "
          f"tls_client_ca_file {args.out}/ca.pem, tls_crl_file {args.out}/crl.pem")
    print(f"agent:  cloud_tls_ca_file {args.out}/ca.pem, cloud_tls_cert_file {args.out}/agent.pem, "
          f"cloud_tls_key_file {args.out}/agent.key (and tls_cert_file/tls_key_file for its own port)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from edgecascade.dev_pki import DEFAULT_HOSTS, issue

    item = issue(args.ca_dir, args.name, args.role, out_dir=args.out, hosts=[*DEFAULT_HOSTS, *args.host], days=args.days)
    print(f"wrote {item.cert_file} and {item.key_file} ({item.name}, roles: {', '.join(item.roles) or 'none'})")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from edgecascade.dev_pki import CRL_DAYS, revoke

    done = revoke(args.ca_dir, name=args.name, cert_file=args.cert, serial=args.serial, days=CRL_DAYS if args.days is None else args.days)
    if done.already_revoked:
        print(f"certificate serial {done.serial:x} ({done.holder}) is already on {done.crl_file}: nothing changed")
    else:
        print(f"revoked certificate serial {done.serial:x} ({done.holder}): wrote {done.crl_file} "
              f"({done.revoked_count} revoked); daemons with tls_crl_file read it within a second")
    return 0


def _crl(args: argparse.Namespace) -> int:
    from edgecascade.dev_pki import CRL_DAYS, write_crl

    days = CRL_DAYS if args.days is None else args.days
    path, count = write_crl(args.ca_dir, days=days)
    print(f"wrote {path}: {count} revoked serial(s), good for {days} day(s)")
    return 0


def _token_add(args: argparse.Namespace) -> int:
    import os

    from shared.auth import add_token

    token = add_token(args.tokens_file, args.name, args.role)
    if args.out is None:
        print(token)
        return 0
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    print(f"wrote a token for {args.name} ({', '.join(args.role)}) to {args.out}; its SHA-256 is in {args.tokens_file}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from shared.auth import revoke_tokens

    removed = revoke_tokens(args.tokens_file, args.name)
    print(f"removed {removed} token(s) of {args.name} from {args.tokens_file} (daemons reload it within a second)")
    return 0 if removed else 1
