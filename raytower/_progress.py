"""Progress of long work, with an ETA: in place on a terminal, a line at most every 30 s in a log.

    bar = Progress("lightgcn", total_steps, log=print)
    for step ...: bar.update(done, lambda: f"bpr loss {loss:.3f}")
    bar.close()                       # a terminal's line is cleared; the log gets the time it took

So nothing long is silent for more than a second on a terminal, and a log is not flooded.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable

LOG_EVERY_S = 30.0
TERMINAL_EVERY_S = 0.5


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, what: str, total: int, log: Callable[[str], None] | None = print, stream=None,
                 now: Callable[[], float] = time.perf_counter):
        self.what, self.total, self.log, self.now = what, max(1, int(total)), log, now
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = self.last = now()
        self.drawn = False

    def line(self, done: int, detail: str = "") -> str:
        spent = self.now() - self.t0
        eta = f"ETA {clock(spent / done * (self.total - done))}" if 0 < done < self.total else f"{clock(spent)}"
        return f"  {self.what} {100 * done / self.total:3.0f}%  {detail}  {eta}".rstrip()

    def update(self, done: int, detail: Callable[[], str] | str = "") -> None:
        """``detail`` may be a callable: it is only called when a line is shown."""
        if self.log is None:
            return
        now = self.now()
        if now - self.last < (TERMINAL_EVERY_S if self.tty else LOG_EVERY_S):
            return
        self.last = now
        text = self.line(done, detail() if callable(detail) else detail)
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + text[:width].ljust(width))
            self.stream.flush()
            self.drawn = True
        else:
            self.log(text)

    def close(self, summary: str | None = None) -> None:
        """Clear a terminal's line; then ``summary`` (with the time taken) goes to the log."""
        if self.tty and self.drawn:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + " " * width + "\r")
            self.stream.flush()
        if summary is not None and self.log is not None:
            self.log(f"  {self.what}: {summary} (in {clock(self.now() - self.t0)})")
