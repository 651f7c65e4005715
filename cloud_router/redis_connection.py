"""Connecting to Redis: URL forms, start-up check with a password-free error, reconnect backoff.

URL forms (redis-py's asyncio client supports all of them):

    redis://[[user]:password@]host:port[/db]        one server
    rediss://...                                    one server over TLS
    unix:///path/to/redis.sock[?db=0]               one server on a Unix socket
    redis+cluster://[[user]:password@]host:port     Redis Cluster, any node as the seed
                                                    (rediss+cluster:// for TLS)
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
                                                    Sentinel: the master of `service_name`;
                                                    the password is the master's

Tested here: one server (redis://) and Sentinel (tests/test_redis_scheduler.py). Cluster goes
through redis-py's own `RedisCluster` and is untested; every command edgecascade sends touches
a single key, so no hash tags are needed on a cluster.

redis-py reconnects a pooled connection on the next command after Redis restarts; the
long-running loops (worker reads, reply reads, pressure, heartbeats) wait with `Backoff`
between failed attempts so a Redis outage does not turn into a busy loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from shared.errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel")
#: Errors that mean "Redis is not there right now" rather than "this command is wrong".
CONNECTION_ERRORS = (aioredis.ConnectionError, aioredis.TimeoutError, ConnectionError, OSError, asyncio.TimeoutError)

_PASSWORD_IN_NETLOC = re.compile(r"(?P<head>//[^/@:]*:)(?P<password>[^@/]*)@")
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and error messages."""
    url = _PASSWORD_IN_NETLOC.sub(lambda m: f"{m['head']}***@" if m["password"] else m[0], url)
    return _PASSWORD_IN_QUERY.sub(lambda m: f"{m['head']}***", url)


def _scrub(message: str, url: str) -> str:
    """Remove the URL's password from a message that might quote it."""
    password = urlsplit(url).password if "://" in url else None
    return message.replace(password, "***") if password else message


def client_from_url(url: str, *, socket_timeout_s: float = 5.0, connect_timeout_s: float = 1.0,
                    max_connections: int = 64) -> Any:
    """A redis.asyncio client (plain, cluster or sentinel-managed) for `url`, not yet connected.

    Socket timeouts are bounded so a hung Redis fails a request instead of holding it; blocking
    reads use block times well under `socket_timeout_s`. One immediate retry lets a command
    ride over a connection that went stale when Redis restarted. Commands wait for one of
    `max_connections` pooled connections rather than failing when all are busy.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"setting 'redis_url': {redact_url(str(url))!r} is not a URL; expected e.g. redis://host:6379/0")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"setting 'redis_url': scheme {scheme!r} in {redact_url(url)!r} is not one of {list(SCHEMES)}")
    common = dict(socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
                  retry=Retry(NoBackoff(), 1), decode_responses=False)
    try:
        if scheme.endswith("+cluster"):
            return RedisCluster.from_url(scheme.split("+")[0] + "://" + url.split("://", 1)[1],
                                         socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s)
        if scheme == "redis+sentinel":
            return _sentinel_master(url, common)
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=socket_timeout_s, **common)
        return aioredis.Redis(connection_pool=pool)
    except (ValueError, TypeError, RedisError) as exc:
        raise ConfigError(f"setting 'redis_url': cannot use {redact_url(url)!r}: {_scrub(str(exc), url)}") from None


def _sentinel_master(url: str, common: dict[str, Any]) -> Any:
    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    hosts = []
    for host_port in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {host_port!r} is not host:port")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("no service name after the sentinel addresses (redis+sentinel://host:port/service_name)")
    db = int(path[1]) if len(path) > 1 else int(dict(parse_qsl(parts.query)).get("db", 0))
    sentinel = Sentinel(hosts, socket_timeout=common["socket_timeout"], socket_connect_timeout=common["socket_connect_timeout"])
    return sentinel.master_for(path[0], db=db, username=parts.username or None, password=parts.password or None, **common)


async def connect(url: str, *, startup_wait_s: float = 5.0) -> Any:
    """A client whose server answered PING, trying for up to `startup_wait_s`; otherwise
    UnavailableError naming the URL without its password."""
    client = client_from_url(url)
    backoff = Backoff(initial_s=0.1, max_s=1.0)
    deadline = time.monotonic() + startup_wait_s
    while True:
        try:
            await client.ping()
            return client
        except RedisError as exc:
            if isinstance(exc, CONNECTION_ERRORS) and time.monotonic() + backoff.peek_s() < deadline:
                await asyncio.sleep(backoff.next_s())
                continue
            await close_quietly(client)
            raise UnavailableError(f"cannot reach Redis at {redact_url(url)}: {_scrub(str(exc), url)}") from None
        except OSError as exc:
            await close_quietly(client)
            raise UnavailableError(f"cannot reach Redis at {redact_url(url)}: {_scrub(str(exc), url)}") from None


async def close_quietly(client: Any) -> None:
    try:
        await client.aclose()
    except Exception:
        pass


class Backoff:
    """Exponential backoff with jitter for retry loops: 0.1 s, 0.2 s, ... up to `max_s`."""

    def __init__(self, initial_s: float = 0.1, max_s: float = 2.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._attempt = 0

    def peek_s(self) -> float:
        return min(self.max_s, self.initial_s * 2 ** self._attempt)

    def next_s(self) -> float:
        delay_s = self.peek_s()
        self._attempt += 1
        return delay_s * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTION_ERRORS)
