"""A one-line text progress bar for the command line (redrawn in place on a terminal)."""

from __future__ import annotations

import sys
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class ProgressBar:
    def __init__(self, label: str, *, width: int = 30, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.width = width
        self.stream = stream
        self.tty = stream.isatty()
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
