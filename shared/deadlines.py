"""The one deadline representation inside a process: an absolute time on `time.monotonic()`, in
seconds, named `deadline_s` (the wall clock can jump; the monotonic one cannot). What crosses to
another process (a Redis work entry) carries Unix time instead, named `deadline_unix_s`, and is
converted here, at the boundary."""

from __future__ import annotations

import time


def to_unix_s(deadline_s: float) -> float:
    """`deadline_s` as Unix time, for another process."""
    return deadline_s - time.monotonic() + time.time()
