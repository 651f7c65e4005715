"""Carries one generation's events from the thread that computes it to the event loop that
streams it: TokenEvents, then a GenerationResult (or an exception)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from shared.llm_request import GenerationResult


class EventPipe:
    """Create on the event loop; `emit` from any thread; `async for event in pipe.events()`."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def emit(self, event: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more

    async def events(self) -> AsyncIterator[Any]:
        """Every event up to and including the GenerationResult; an emitted exception is raised."""
        while True:
            event = await self._queue.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, GenerationResult):
                return
