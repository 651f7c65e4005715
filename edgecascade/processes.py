"""Start daemons on loopback and wait until they serve: as child processes (`Daemon`, what
`edgecascade demo`, the benchmarks and the kill and signal tests use) or in this process on a
thread of their own (`InProcessDaemon`, what most tests use: the same daemon classes and real
gRPC, without a process start).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.errors import ConfigError, UnavailableError
from shared.tls import ClientSecurity, open_channel

#: "LO-HI": the ports `free_port` may hand out, for hosts where only some are open.
PORT_RANGE_ENV = "EDGECASCADE_PORT_RANGE"
_port_range: Optional[tuple[int, int]] = None
_handed_out: set[int] = set()


def parse_port_range(text: str) -> tuple[int, int]:
    """"LO-HI" (inclusive, 1024..65535) -> (LO, HI); a ConfigError naming the problem otherwise."""
    low, sep, high = str(text).strip().partition("-")
    try:
        bounds = (int(low), int(high)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None:
        raise ConfigError(f"port range {text!r} is not LO-HI, e.g. 20000-20100")
    if not (1024 <= bounds[0] <= bounds[1] <= 65535):
        raise ConfigError(f"port range {text!r} must satisfy 1024 <= LO <= HI <= 65535")
    return bounds


def set_port_range(port_range: Optional[str | tuple[int, int]]) -> None:
    """Make `free_port` pick from this range from now on (None: the OS's ephemeral ports, or
    $EDGECASCADE_PORT_RANGE when set)."""
    global _port_range
    _port_range = parse_port_range(port_range) if isinstance(port_range, str) else port_range


def free_port() -> int:
    """A loopback TCP port that is free now: from the configured range (`set_port_range`, else
    $EDGECASCADE_PORT_RANGE) when there is one, never the same one twice in this process."""
    port_range = _port_range
    if port_range is None and os.environ.get(PORT_RANGE_ENV):
        port_range = parse_port_range(os.environ[PORT_RANGE_ENV])
    if port_range is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    low, high = port_range
    for port in range(low, high + 1):
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise UnavailableError(f"no free port left in the range {low}-{high} ({len(_handed_out)} handed out by this "
                           "process, the rest in use); give a wider --port-range")


def wait_serving(target: str, timeout_s: float = 30.0, process: Optional[subprocess.Popen] = None,
                 security: Optional[ClientSecurity] = None) -> None:
    """Block until the gRPC health service at `target` reports SERVING (over TLS per `security`)."""
    deadline = time.monotonic() + timeout_s
    with open_channel(target, security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise UnavailableError(f"daemon for {target} exited with code {process.returncode} before serving")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise UnavailableError(f"daemon at {target} did not become ready within {timeout_s} s")


def _write_config(path: Path, settings: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}))


class Daemon:
    """One `edgecascade edge|cloud run` child process with a YAML config it writes itself.

    Plaintext on loopback unless `settings` name a tls_cert_file; then `client_security` is how
    the start-up health check reaches it."""

    def __init__(self, kind: str, settings: dict[str, Any], work_dir: Path, *, name: str = "", log_to_file: bool = True,
                 env: Optional[dict[str, str]] = None, client_security: Optional[ClientSecurity] = None) -> None:
        if kind not in ("edge", "cloud"):
            raise ValueError(kind)
        self.kind = kind
        self.name = name or kind
        self.port = free_port() if "listen" not in settings else int(str(settings["listen"]).rsplit(":", 1)[1])
        self.settings = {"listen": f"127.0.0.1:{self.port}", **settings}
        if "tls_cert_file" not in settings:
            self.settings.setdefault("plaintext", True)  # loopback children of tests, benchmarks and the demo
        self.client_security = client_security
        self.work_dir = Path(work_dir)
        self.config_path = self.work_dir / f"{self.name}.yaml"
        self.log_path = self.work_dir / f"{self.name}.log"
        self.log_to_file = log_to_file
        self.env = env
        self.process: Optional[subprocess.Popen] = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "Daemon":
        _write_config(self.config_path, self.settings)
        out = open(self.log_path, "ab") if self.log_to_file else subprocess.DEVNULL
        env = {**os.environ, **(self.env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgecascade.cli", self.kind, "run", "--config", str(self.config_path)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        try:
            wait_serving(self.target, timeout_s, self.process, self.client_security)
        except BaseException:  # Ctrl-C while waiting too: never leave an untracked daemon behind
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 15.0) -> Optional[int]:
        """SIGTERM and wait for the drain; SIGKILL if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class InProcessDaemon:
    """An edge agent or cloud router in this process, on an event loop in a background thread,
    with the same settings dict and `target`/`start`/`stop`/`logs` as `Daemon` (no `kill`, no
    environment of its own: use `Daemon` for those). Without `listen` it binds a free port
    and reads it back. `logs()` holds the INFO and higher records logged on its thread."""

    def __init__(self, kind: str, settings: dict[str, Any], work_dir: Path, *, name: str = "") -> None:
        if kind not in ("edge", "cloud"):
            raise ValueError(kind)
        self.kind = kind
        self.name = name or kind
        self.settings = {"listen": "127.0.0.1:0", **settings}
        if "tls_cert_file" not in settings:
            self.settings.setdefault("plaintext", True)  # loopback, like `Daemon`
        self.work_dir = Path(work_dir)
        self.config_path = self.work_dir / f"{self.name}.yaml"
        self.port: Optional[int] = None
        self._thread: Any = None
        self._log = _ThreadLog(f"{self.name}-{id(self):x}-loop")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self._log.text()

    def start(self, timeout_s: float = 60.0) -> "InProcessDaemon":
        from shared.daemon import DaemonThread, GrpcDaemon
        from shared.settings import load_settings

        _write_config(self.config_path, self.settings)   # read back as `edgecascade edge|cloud run --config` would
        daemon: GrpcDaemon
        if self.kind == "edge":
            from edge_agent.daemon import EdgeAgentDaemon
            from edge_agent.settings import EdgeSettings

            edge_settings = load_settings(EdgeSettings, self.config_path)
            daemon, event_loop = EdgeAgentDaemon(edge_settings), edge_settings.event_loop
        else:
            from cloud_router.daemon import RouterDaemon
            from cloud_router.settings import RouterSettings

            router_settings = load_settings(RouterSettings, self.config_path)
            daemon, event_loop = RouterDaemon(router_settings), router_settings.event_loop
        self._thread = DaemonThread(daemon, event_loop, thread_name=self._log.thread_name)
        self._log.attach()
        try:
            self.port = self._thread.start(timeout_s)
        except BaseException:
            self._log.detach()
            raise
        return self

    def stop(self, timeout_s: float = 60.0) -> Optional[int]:
        """Drain (the daemon's `shutdown_grace_s`) and wait for its thread; 0 like a clean exit."""
        if self._thread is None:
            return None
        try:
            self._thread.stop(timeout_s=timeout_s)
        finally:
            self._log.detach()
        return 0

    def __enter__(self) -> "InProcessDaemon":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


#: Packages whose INFO records an in-process daemon's `logs()` shows.
_DAEMON_LOGGERS = ("edge_agent", "cloud_router", "shared")


class _ThreadLog(logging.Handler):
    """Keeps the records logged on one thread, formatted like the daemons' own log lines."""

    def __init__(self, thread_name: str) -> None:
        super().__init__(logging.INFO)
        self.thread_name = thread_name
        self._lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.addFilter(lambda record: record.threadName == self.thread_name)

    def attach(self) -> None:
        for name in _DAEMON_LOGGERS:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        logging.getLogger().addHandler(self)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self._lines) + ("\n" if self._lines else "")
