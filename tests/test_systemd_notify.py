"""The edge agent speaks sd_notify: READY=1 once serving, WATCHDOG=1 pings, STOPPING=1 on drain."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

import pytest

from edge_agent.systemd_notify import SystemdNotifier, socket_address, watchdog_interval_s
from edgecascade import Client
from edgecascade.processes import Daemon
from tests.helpers.bundles import CONFIDENT


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify"  # short: AF_UNIX paths are limited to 107 bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []

    def next_message(self, timeout_s: float = 30.0) -> str:
        self.sock.settimeout(timeout_s)
        message = self.sock.recv(4096).decode()
        self.messages.append(message)
        return message

    def wait_for(self, line: str, timeout_s: float = 30.0) -> str:
        while True:
            message = self.next_message(timeout_s)
            if line in message.splitlines():
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    with tempfile.TemporaryDirectory(prefix="ecsd-") as directory:
        notify = NotifyListener(Path(directory))
        yield notify
        notify.close()


def test_agent_notifies_ready_pings_the_watchdog_and_says_stopping(tmp_path, bundles, listener):
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"}  # a ping every 0.1 s
    edge = Daemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": None}, tmp_path, env=env).start()
    try:
        ready = listener.next_message()
        lines = ready.splitlines()
        assert lines[0] == "READY=1", ready
        assert f"STATUS=serving toy-edge v1 on port {edge.port}" in lines
        # READY=1 comes after the server serves: a request succeeds now
        with Client(edge.target) as client:
            assert client.infer(CONFIDENT).served_by == "edge"
        pings = [listener.next_message() for _ in range(3)]
        assert pings == ["WATCHDOG=1"] * 3
    finally:
        returncode = edge.stop()
    stopping = listener.wait_for("STOPPING=1")
    assert "STATUS=draining" in stopping.splitlines()
    assert returncode == 0, edge.logs()
    assert "READY=1" not in "\n".join(listener.messages[1:]), "READY=1 sent more than once"


def test_agent_without_watchdog_sends_ready_and_no_pings(tmp_path, bundles, listener):
    edge = Daemon("edge", {"bundle_dir": str(bundles["edge"]), "cloud_target": None}, tmp_path,
                  env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": ""}).start()
    try:
        assert listener.next_message().startswith("READY=1\n")
    finally:
        returncode = edge.stop()
    # the next message is STOPPING=1: no WATCHDOG=1 in between
    assert listener.next_message().startswith("STOPPING=1\n")
    assert returncode == 0


def test_abstract_socket_names_and_watchdog_environment():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/systemd/notify") == "\0/org/systemd/notify"
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, pid=42) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, pid=42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, pid=42) is None
    assert watchdog_interval_s({}, pid=42) is None


def test_abstract_socket_receives_messages():
    name = f"ecsd-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        asyncio.run(notifier.close())


def test_no_socket_or_a_missing_one_never_raises(tmp_path, caplog):
    quiet = SystemdNotifier.from_environment({})
    assert not quiet.enabled and quiet.send("READY=1") is False
    unsupported = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not unsupported.enabled and "only unix socket paths" in caplog.text
    missing = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert missing.send("READY=1") is False and missing.send("WATCHDOG=1") is False
    assert caplog.text.count("cannot notify systemd") == 1  # logged once, not per ping
    asyncio.run(missing.close())
