"""An asyncio gRPC channel that follows its client files: when the CA, client certificate, key
or token file it was built from changes, new calls go over a new channel built from the new
files, and the old channel closes once its calls have ended. gRPC Python has no client
credentials that re-read files, so a new channel is the way to rotate them without a restart.

The files' stamp (`shared.tls.file_stamp`, as the servers' certificate reload) is checked when
a call is about to be made, at most every `check_interval_s`. A changed set is read once and
checked before it is used: the CA and certificate parse, the key is the certificate's, the token
file holds one token. A set that fails (half written, a key of another certificate) is refused
with a warning that names the file and the reason, at most one a minute; the channel in use
stays, and the files are tried again when they change again. A plaintext channel without a
token file has nothing to follow.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.errors import ConfigError
from shared.tls import ClientSecurity, ClientTLSFiles, FileStamp, file_stamp, open_aio_channel, read_token_file
from shared.undecodable_requests import RateLimitedLog

log = logging.getLogger(__name__)

#: How often, at most, the files are looked at (one stat each) before a call.
CHECK_INTERVAL_S = 1.0
#: How long the replaced channel's calls may go on before it is closed anyway. Calls carry their
#: own deadlines (600 s at most by default, `max_timeout_ms`); the channel closes as soon as they end.
CLOSE_GRACE_S = 600.0
#: One warning about refused files per this many seconds at most.
REFUSAL_LOG_INTERVAL_S = 60.0

StubT = TypeVar("StubT")


def checked_tls_files(security: ClientSecurity) -> ClientTLSFiles:
    """The TLS files of `security`, read once and checked; a ConfigError naming the file and the
    reason when the CA or certificate does not parse or the key does not belong to the certificate."""
    files = security.read_tls_files()
    if files.ca is not None:
        _certificates(files.ca, f"CA file {security.ca_file}")
    if files.cert_chain is not None and files.key is not None:
        certificate = _certificates(files.cert_chain, f"client certificate file {security.cert_file}")[0]
        try:
            key = serialization.load_pem_private_key(files.key, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"client key file {security.key_file}: not a PEM private key without a password "
                              f"({exc})") from None
        if _public_der(key.public_key()) != _public_der(certificate.public_key()):
            raise ConfigError(f"client key file {security.key_file}: not the key of the certificate in "
                              f"{security.cert_file}")
    return files


def _certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(f"{what}: no PEM certificate ({exc})") from None


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class RotatingChannel(Generic[StubT]):
    """An asyncio channel to `target` per `security` (None: plaintext) that is replaced when its
    files change; `stub()` is the stub (`stub_of(channel)`) of the channel to use for the next call.
    `what` names the link in log lines."""

    def __init__(self, target: str, security: Optional[ClientSecurity], *,
                 stub_of: Callable[[grpc.aio.Channel], StubT], options: Sequence[tuple[str, Any]] = (),
                 what: str = "channel", check_interval_s: float = CHECK_INTERVAL_S,
                 close_grace_s: float = CLOSE_GRACE_S) -> None:
        if check_interval_s < 0 or close_grace_s < 0:
            raise ConfigError("check_interval_s and close_grace_s must not be negative")
        self.target = target
        self.what = what
        self.check_interval_s = check_interval_s
        self.close_grace_s = close_grace_s
        self.rotations = 0
        """How many times a new channel replaced the one in use."""
        self._security = security
        self._options = list(options)
        self._stub_of = stub_of
        self._paths = security.files() if security is not None else []
        self._stamp = file_stamp(self._paths)
        self._refused_stamp: Optional[FileStamp] = None
        self._refusals = RateLimitedLog(log, REFUSAL_LOG_INTERVAL_S)
        self._next_check_s = time.monotonic() + check_interval_s
        self._channel = open_aio_channel(target, security, self._options)
        self._stub = stub_of(self._channel)
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    def stub(self) -> StubT:
        """The stub for the next call: of a new channel when the files changed since the last
        check and the new ones are good. Call it on the event loop, once per call."""
        if self._paths:
            now = time.monotonic()
            if now >= self._next_check_s:
                self._next_check_s = now + self.check_interval_s
                self._follow_files()
        return self._stub

    def _follow_files(self) -> None:
        stamp = file_stamp(self._paths)
        if stamp in (self._stamp, self._refused_stamp):
            return
        assert self._security is not None  # there are no files to follow without it
        try:
            security = self._security
            if security.token_file is not None:
                security = dataclasses.replace(security, token=read_token_file(security.token_file))
            tls_files = checked_tls_files(security) if security.tls else None
        except ConfigError as exc:
            self._refused_stamp = stamp
            self._refusals.warning("%s to %s: changed client files refused, still using the previous ones: %s",
                                   self.what, self.target, exc)
            return
        old = self._channel
        self._channel = open_aio_channel(self.target, security, self._options, tls_files=tls_files)
        self._stub = self._stub_of(self._channel)
        self._security, self._stamp, self._refused_stamp = security, stamp, None
        self.rotations += 1
        log.info("%s to %s: client files changed, new calls use a channel built from them; the previous "
                 "channel closes when its calls have ended", self.what, self.target)
        task = asyncio.get_running_loop().create_task(old.close(grace=self.close_grace_s))
        self._retiring[task] = old
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        """Close the channel in use and any replaced one still waiting for its calls."""
        retiring = list(self._retiring.items())
        self._retiring.clear()
        for task, _ in retiring:
            task.cancel()
        await asyncio.gather(*(task for task, _ in retiring), return_exceptions=True)
        for _, channel in retiring:
            await channel.close()
        await self._channel.close()
