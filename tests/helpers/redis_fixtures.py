"""Real `redis-server` processes for tests, each on its own free port, never 127.0.0.1:6379.

`redis_server` is one server for the whole session; `redis_url` flushes it before each test.
A test that kills or restarts Redis takes `own_redis` instead, a server of its own.
Loaded for every test module by `pytest_plugins` in tests/conftest.py.
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks.redis_process import RedisServer

requires_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    if redis_server.process.poll() is not None:     # a test killed it: bring it back on its port
        redis_server.start()
    import redis  # here, not at import: the Python 3.10 edge tests load these fixtures without redis installed

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
