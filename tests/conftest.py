"""Fixtures for every test module: tiny model bundles, a cloud router and an edge agent (in this
process by default), one demo-model build per session, Redis servers (`tests.helpers.redis_fixtures`)
and the update tests' shared router. Helpers that are not fixtures live in `tests/helpers/`;
test modules import those, never this file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecascade.processes import InProcessDaemon
from tests.helpers.bundles import make_softmax_bundle
from tests.helpers.updates import make_keys

pytest_plugins = ["tests.helpers.redis_fixtures", "tests.helpers.llm_fixtures"]


@pytest.fixture
def bundles(tmp_path: Path) -> dict[str, Path]:
    return {
        "edge": make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0),
        "cloud": make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0, permute=True),
    }


@pytest.fixture
def cloud_daemon(tmp_path: Path, bundles):
    with InProcessDaemon("cloud", {"model_dirs": [str(bundles["cloud"])], "max_delay_ms": 2.0}, tmp_path, name="cloud") as daemon:
        yield daemon


@pytest.fixture
def edge_daemon(tmp_path: Path, bundles, cloud_daemon):
    settings = {"bundle_dir": str(bundles["edge"]), "cloud_target": cloud_daemon.target,
                "breaker_failure_threshold": 2, "breaker_cooldown_s": 0.5}
    with InProcessDaemon("edge", settings, tmp_path, name="edge") as daemon:
        yield daemon


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """One demo-model build per test session, in a private cache (never the user's)."""
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="session")
def update_world(tmp_path_factory):
    """One honest router (it checks uploads) and the signing keys, shared by the update tests."""
    tmp = tmp_path_factory.mktemp("updates")
    key, public = make_keys(tmp)
    cloud = make_softmax_bundle(tmp / "cloud", name="toy-cloud", scale=10.0, permute=True)
    with InProcessDaemon("cloud", {"model_dirs": [str(cloud)]}, tmp, name="router") as router:
        yield {"router": router, "key": key, "public": public, "tmp": tmp}
