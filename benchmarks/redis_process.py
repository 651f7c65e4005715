"""A private `redis-server` child process on a free loopback port, for tests and benchmarks.

Never the machine's shared instance: each RedisServer picks its own port, keeps no data on
disk (`--save "" --appendonly no`), and can be killed and restarted on the same port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from edgecascade.processes import free_port
from shared.errors import ConfigError, UnavailableError


class RedisServer:
    def __init__(self, work_dir: Path, *, port: Optional[int] = None, executable: str = "redis-server") -> None:
        path = shutil.which(executable)
        if path is None:
            raise ConfigError(f"{executable} is not installed (apt-get install redis-server)")
        self.executable = path
        self.port = port or free_port()
        self.work_dir = Path(work_dir)
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.work_dir / f"redis-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work_dir), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UnavailableError(f"redis-server on port {self.port} exited with code {self.process.returncode}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise UnavailableError(f"redis-server on port {self.port} did not answer within {timeout_s} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: Redis vanishes with everything it held."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, down_s: float = 0.0) -> "RedisServer":
        self.kill()
        time.sleep(down_s)
        return self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
