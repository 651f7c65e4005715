"""What both daemons are: a class that builds and binds its gRPC server in `start()`, reports
the bound `port`, drains in `stop()` and waits in `serve_forever()`.

Signals belong to the command line only: `run_until_signal` (what `edgecascade edge|cloud run`
calls) installs the SIGTERM/SIGINT handlers and calls `stop()`. `DaemonThread` runs a daemon
on an event loop of its own in a background thread, for synchronous callers in the same
process (the tests).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import signal
import threading
from typing import TYPE_CHECKING, Any, Generic, Optional, Protocol, Sequence, TypeVar

import grpc

from shared.auth import server_interceptors
from shared.errors import UnavailableError
from shared.event_loop import EventLoopName, run_on_loop
from shared.grpc_server import add_health_and_reflection, bind, create_server, set_serving, start_health_port
from shared.metrics import DaemonMetrics, MetricsEndpoint, serve_metrics

if TYPE_CHECKING:
    from shared.tls import ServerSecurity

log = logging.getLogger(__name__)


class ServedSettings(Protocol):
    """What `GrpcDaemon` reads of its daemon's settings (`shared.settings.DaemonSettings` plus
    `shared.security_settings.ServerSecuritySettings` and the daemon's own `listen`)."""

    @property
    def listen(self) -> str: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def max_concurrent_rpcs(self) -> Optional[int]: ...
    @property
    def metrics_port(self) -> Optional[int]: ...
    @property
    def health_listen(self) -> Optional[str]: ...
    @property
    def shutdown_grace_s(self) -> float: ...
    def server_security(self) -> "ServerSecurity": ...


SettingsT = TypeVar("SettingsT", bound=ServedSettings)


class GrpcDaemon(abc.ABC, Generic[SettingsT]):
    """One daemon on the running event loop. Subclasses build their side in `_open` and take it
    down in `_close`; this class owns the server, health, reflection, /metrics and the drain.

    `settings` is a `shared.settings.DaemonSettings` and a
    `shared.security_settings.ServerSecuritySettings` (TLS or explicit plaintext, credentials,
    `max_concurrent_rpcs`); each daemon names its settings class (`GrpcDaemon[EdgeSettings]`)."""

    #: The gRPC services this daemon serves; health reports each of them.
    service_names: Sequence[str] = ()
    #: How logs and errors name this daemon.
    daemon_name = "daemon"

    def __init__(self, settings: SettingsT) -> None:
        self.settings: SettingsT = settings
        #: The port the server is bound to (a `listen` port of 0 picks a free one); None before `start()`.
        self.port: Optional[int] = None
        self._server: Optional[grpc.aio.Server] = None
        self._health: Any = None
        self._metrics_endpoint: Optional[MetricsEndpoint] = None
        self._health_server: Optional[grpc.aio.Server] = None
        self._stopped: Optional[asyncio.Event] = None
        self._stopping: Optional[asyncio.Future] = None

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Server interceptors, outermost first: credentials and roles (`shared.auth`)."""
        return list(server_interceptors(self.settings, daemon=self.daemon_name))

    @abc.abstractmethod
    async def _open(self, server: grpc.aio.Server) -> DaemonMetrics:
        """Build the model side and add its servicers to `server`; return the daemon's metrics."""

    async def _serving(self) -> None:
        """Called once the server answers: start background work, log."""

    async def _draining(self) -> None:
        """Called when the drain begins, before health reports NOT_SERVING."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Take the model side down after the server has drained (also after a failed start)."""

    async def start(self) -> int:
        """Build, bind and start serving; returns the bound port. A bad setting raises a typed
        error (ConfigError) with everything built so far taken down again."""
        if self._stopped is not None:
            raise RuntimeError("a daemon starts once")
        self._stopped = asyncio.Event()
        server = None
        try:
            server = self._server = create_server(self.settings.max_message_bytes, interceptors=self._interceptors(),
                                                  max_concurrent_rpcs=self.settings.max_concurrent_rpcs)
            metrics = await self._open(server)
            self._health = add_health_and_reflection(server, self.service_names)
            port = bind(server, self.settings.listen, self.settings.server_security(), daemon=self.daemon_name)
            self._metrics_endpoint = serve_metrics(metrics, self.settings.listen, self.settings.metrics_port)
            await server.start()
            await set_serving(self._health, self.service_names, True)
            self._health_server = await start_health_port(self._health, self.settings.health_listen)
        except BaseException:
            if server is not None:
                await server.stop(0)
            if self._health_server is not None:
                await self._health_server.stop(0)
            await self._close()
            if self._metrics_endpoint is not None:
                self._metrics_endpoint.close()
            self._stopped.set()
            raise
        self.port = port
        await self._serving()
        return port

    async def serve_forever(self) -> None:
        """Start if not started yet, then wait until `stop()` has finished."""
        if self._stopped is None:
            await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self, grace_s: Optional[float] = None) -> None:
        """Drain: report NOT_SERVING, let in-flight RPCs finish for up to `grace_s` (default
        `shutdown_grace_s`), then take the model side down. Safe to call more than once."""
        if self._stopped is None:
            return
        if self._stopping is None:
            grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
            self._stopping = asyncio.ensure_future(self._drain(grace))
        await asyncio.shield(self._stopping)

    async def _drain(self, grace_s: float) -> None:
        assert self._server is not None and self._stopped is not None
        try:
            await self._draining()
            if self._health is not None:
                await set_serving(self._health, self.service_names, False)
            await self._server.stop(grace_s)
            await self._close()
            if self._health_server is not None:
                await self._health_server.stop(0)
        finally:
            if self._metrics_endpoint is not None:
                await asyncio.to_thread(self._metrics_endpoint.close)
                self._metrics_endpoint = None
            self._stopped.set()


async def run_until_signal(daemon: GrpcDaemon) -> None:
    """The command line's way to run a daemon: start it, serve until SIGTERM or SIGINT, then
    drain (`stop()`)."""
    await daemon.start()
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    waiter = asyncio.ensure_future(signalled.wait())
    serving = asyncio.ensure_future(daemon.serve_forever())
    await asyncio.wait({waiter, serving}, return_when=asyncio.FIRST_COMPLETED)
    if signalled.is_set():
        log.info("signal received: draining for up to %.1f s", daemon.settings.shutdown_grace_s)
        await daemon.stop()
    waiter.cancel()
    await serving
    log.info("stopped")


class DaemonThread:
    """Runs one daemon on an event loop of its own in a background thread, so synchronous code
    (tests, tools) can start and stop it in-process: no child process, no signals."""

    def __init__(self, daemon: GrpcDaemon, event_loop: EventLoopName = "auto", thread_name: str = "daemon-loop") -> None:
        self.daemon = daemon
        self.event_loop = event_loop
        self.thread_name = thread_name
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> Optional[int]:
        return self.daemon.port

    def start(self, timeout_s: float = 60.0) -> int:
        """Start the daemon and wait until it serves; returns its port. Re-raises what made
        the start fail."""
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise UnavailableError(f"{self.thread_name}: the daemon did not start within {timeout_s} s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self.daemon.port is not None
        return self.daemon.port

    def stop(self, grace_s: Optional[float] = None, timeout_s: float = 60.0) -> None:
        """Drain the daemon and wait for its thread to end."""
        if self._thread is None:
            return
        if self._loop is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self.daemon.stop(grace_s), self._loop)
            future.result(timeout_s)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        run_on_loop(self._main(), self.event_loop)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self.daemon.start()
        except BaseException as exc:  # handed to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self.daemon.serve_forever()
