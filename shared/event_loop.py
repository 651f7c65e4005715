"""Run a daemon's main coroutine on the event loop its settings name.

`auto` (the default) takes uvloop where it is installed (the `edge` and `cloud` extras
install it on Linux and macOS) and asyncio's own loop otherwise; `uvloop` insists on it.
gRPC's asyncio stack runs on any asyncio loop. `edgecascade bench serve` measures what each
loop gives (its transport variants; docs/benchmarks.md, "Serving overhead").
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from typing import Any, Awaitable, Coroutine, Literal, Optional, TypeVar

from shared.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

EventLoopName = Literal["auto", "asyncio", "uvloop"]


def resolve_event_loop(name: EventLoopName) -> str:
    """`asyncio` or `uvloop`: what `name` means on this machine."""
    if name == "asyncio":
        return "asyncio"
    available = importlib.util.find_spec("uvloop") is not None
    if name == "uvloop" and not available:
        raise ConfigError("event_loop is 'uvloop' but uvloop is not installed (pip install uvloop), "
                          "or set event_loop to 'auto' or 'asyncio'")
    return "uvloop" if available else "asyncio"


def run_on_loop(main: Coroutine[Any, Any, Any], name: EventLoopName = "auto") -> Any:
    """asyncio.run(main) on the loop `name` resolves to."""
    chosen = resolve_event_loop(name)
    log.info("event loop: %s", chosen)
    if chosen == "uvloop":
        import uvloop

        return uvloop.run(main)  # asyncio.run on a uvloop loop, also on Python 3.10
    return asyncio.run(main)


async def within(awaitable: Awaitable[T], timeout_s: Optional[float]) -> T:
    """Await `awaitable` for at most `timeout_s` (None: no limit); raise the built-in
    TimeoutError when it runs out. asyncio.timeout where it exists (3.11+), else wait_for, whose
    asyncio.TimeoutError is not the built-in one on 3.10 (edge boards run 3.10)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout_s):  # novermin (3.11+ only, checked above)
            return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except asyncio.TimeoutError:
        raise TimeoutError from None
