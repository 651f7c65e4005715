"""Tell systemd how the agent is doing: the sd_notify protocol, standard library only.

Under a unit with `Type=notify`, systemd passes the path of a datagram socket in
`NOTIFY_SOCKET`; the service sends newline-separated `KEY=VALUE` lines to it. The agent sends
`READY=1` once its gRPC server is serving, `STOPPING=1` when the drain starts, and, when the
unit sets `WatchdogSec=`, `WATCHDOG=1` every half of `WATCHDOG_USEC`. The pings come from a
task on the agent's event loop, so a loop that stops running stops the pings and systemd
restarts the agent. Without `NOTIFY_SOCKET` (any run outside systemd) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)


def socket_address(notify_socket: str) -> str:
    """The address to send to: a filesystem path, or an abstract name given as `@name`."""
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    return notify_socket


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when systemd expects
    none from this process (unset, zero, unreadable, or WATCHDOG_PID names another process)."""
    usec = environ.get("WATCHDOG_USEC", "")
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a whole number of microseconds", usec)
        return None
    return value / 2e6 if value > 0 else None


class SystemdNotifier:
    """Sends sd_notify messages to `notify_socket`; None turns every method into a no-op.
    A failed send is logged and never raised: the agent keeps serving without systemd."""

    def __init__(self, notify_socket: Optional[str], watchdog_interval_s: Optional[float] = None) -> None:
        self.address = socket_address(notify_socket) if notify_socket else None
        self.watchdog_interval_s = watchdog_interval_s if self.address else None
        self._socket: Optional[socket.socket] = None
        self._watchdog_task: Optional[asyncio.Task] = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "SystemdNotifier":
        environ = os.environ if environ is None else environ
        notify_socket = environ.get("NOTIFY_SOCKET") or None
        if notify_socket and not notify_socket.startswith(("/", "@")):
            log.warning("ignoring NOTIFY_SOCKET=%r: only unix socket paths and @abstract names are supported",
                        notify_socket)
            notify_socket = None
        return cls(notify_socket, watchdog_interval_s(environ, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        """Send one message (`KEY=VALUE` lines); True when the socket took it."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:  # once: a missing socket would otherwise log every ping
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
                self._warned = True
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self, status: str = "draining") -> None:
        self.send(f"STOPPING=1\nSTATUS={status}")

    def start_watchdog(self) -> None:
        """Ping WATCHDOG=1 from the running loop every watchdog_interval_s (if systemd asked)."""
        if self.watchdog_interval_s is None or self._watchdog_task is not None:
            return
        log.info("systemd watchdog: pinging every %.3f s", self.watchdog_interval_s)
        self._watchdog_task = asyncio.get_running_loop().create_task(self._ping_forever(self.watchdog_interval_s))

    async def _ping_forever(self, interval_s: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
            try:
                await self._watchdog_task
            except asyncio.CancelledError:
                pass
            self._watchdog_task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
