"""Progress on the command line: a one-line bar, and elapsed time for stages with no count
(both redrawn in place on a terminal)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class ProgressBar:
    def __init__(self, label: str, *, width: int = 30, stream: Optional[TextIO] = None) -> None:
        self.label = label
        self.width = width
        self.stream = stream if stream is not None else sys.stderr  # looked up now: it may have been replaced
        self.tty = self.stream.isatty()
        self._last_line = ""

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        filled = int(round(share * self.width))
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {share:4.0%} {human_bytes(done)}/{human_bytes(total)}"
        self._last_line = line
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()

    def close(self) -> None:
        if self._last_line:
            self.stream.write(("\r" if self.tty else "") + self._last_line + "\n")
            self.stream.flush()


class Elapsed:
    """For a stage with no natural progress count (a solver, a model load): on a terminal, a
    line redrawn every second with the time spent so far; `seconds` when done. Off the terminal
    (or with show=False) it draws nothing."""

    def __init__(self, label: str, *, show: bool = True, stream: Optional[TextIO] = None, interval_s: float = 1.0) -> None:
        import threading

        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.show = show and self.stream.isatty()
        self.interval_s = interval_s
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._draw, daemon=True) if self.show else None

    def _draw(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.stream.write(f"\r  {self.label}: {time.perf_counter() - self._started:.0f} s")
            self.stream.flush()

    def __enter__(self) -> "Elapsed":
        self._started = time.perf_counter()
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._started
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r" + " " * (len(self.label) + 16) + "\r")
            self.stream.flush()
