"""The `listen` address of both daemons: checked when the settings load, explained when the
bind fails (port in use, address not on this host), so neither start-up ends in a traceback."""

from __future__ import annotations

import errno
import socket
from typing import Annotated

from pydantic import AfterValidator


def split_listen(listen: str) -> tuple[str, int]:
    """(host, port) of `host:port` or `[v6]:port`; ValueError naming what is wrong."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:50051 or [::]:50051, got {listen!r}")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"an IPv6 host goes in brackets, e.g. [::1]:50051, got {listen!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r} in {listen!r}")
    return host.strip("[]"), int(port_text)


def _check(listen: str) -> str:
    if not listen.startswith("unix:"):
        split_listen(listen)
    return listen


#: A settings field type: `unix:PATH`, or host:port with a port from 0 (any free one) to 65535.
ListenAddress = Annotated[str, AfterValidator(_check)]


def bind_failure(listen: str) -> str:
    """Why gRPC could not bind `listen`, in words (it only says that it could not)."""
    if listen.startswith("unix:"):
        return f"cannot listen on {listen}: the socket path is in use or its directory is not writable"
    try:
        host, port = split_listen(listen)
    except ValueError as exc:
        return f"cannot listen on {listen!r}: {exc}"
    return f"cannot listen on {listen}: {_probe(host, port) or 'gRPC refused the address'}"


def _probe(host: str, port: int) -> str:
    """What stops a TCP bind to host:port, in words; empty when a bind works."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"unknown host {host!r} ({exc.strerror})"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"port {port} is already in use (another daemon?)"
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"{host} is not an address of this machine"
                if exc.errno == errno.EACCES:
                    return "permission denied (ports below 1024 need privileges)"
                return exc.strerror or str(exc)
    return ""

def check_can_listen(listen: str) -> None:
    """Raise ConfigError when `listen` cannot be bound now (checked before a slow model load).

    The probe sets SO_REUSEADDR as gRPC does, so a port left in TIME_WAIT is not refused."""
    from shared.errors import ConfigError

    if listen.startswith("unix:"):
        return
    host, port = split_listen(listen)
    if port == 0:
        return
    problem = _probe(host, port)
    if problem:
        raise ConfigError(f"cannot listen on {listen}: {problem}")
