"""The daemons' event loop: uvloop when installed (auto), asyncio's on request, a clear error
when uvloop is demanded but missing; and a real agent serving on each loop."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgecascade.processes import InProcessDaemon
from shared.errors import ConfigError
from shared.event_loop import resolve_event_loop, run_on_loop
from shared.sdk import Client
from tests.helpers.bundles import make_softmax_bundle


def test_asyncio_is_always_available():
    assert resolve_event_loop("asyncio") == "asyncio"
    assert run_on_loop(_loop_class_name(), "asyncio") == "_UnixSelectorEventLoop"


def test_auto_takes_uvloop_when_installed():
    pytest.importorskip("uvloop")
    assert resolve_event_loop("auto") == "uvloop"
    assert run_on_loop(_loop_class_name(), "auto") == "Loop"


def test_uvloop_demanded_but_missing_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "uvloop" else object())
    assert resolve_event_loop("auto") == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        resolve_event_loop("uvloop")


async def _loop_class_name_coro():
    import asyncio

    return type(asyncio.get_running_loop()).__name__


def _loop_class_name():
    return _loop_class_name_coro()


@pytest.mark.parametrize("event_loop", ["asyncio", "auto"])
def test_agent_serves_on_each_loop(tmp_path, event_loop):
    bundle = make_softmax_bundle(tmp_path / "edge", name="edge", scale=4.0)
    config = {"bundle_dir": str(bundle), "cloud_target": None, "event_loop": event_loop}
    with InProcessDaemon("edge", config, tmp_path, name=f"edge-{event_loop}") as agent, Client(agent.target) as client:
        result = client.infer(np.array([4.0, 0.0, 0.0], dtype=np.float32))
        assert result.served_by == "edge" and result.label == 0
    assert f"event loop: {resolve_event_loop(event_loop)}" in agent.logs()


def test_bad_event_loop_setting_is_refused(tmp_path):
    bundle = make_softmax_bundle(tmp_path / "edge", name="edge", scale=4.0)
    from pydantic import ValidationError

    from edge_agent.settings import EdgeSettings

    with pytest.raises(ValidationError, match="event_loop"):
        EdgeSettings(bundle_dir=bundle, event_loop="trio")
