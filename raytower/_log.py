"""Where a search's lines go: the ``raytower`` logger, and the ``log`` callable its caller hands in.

    with lines_to(log):          # run_search: every line said inside goes to log(line) too
        say("search: ...")       # -> logging.getLogger("raytower").info(...), then log(...)

Every line a search prints (its header, one line per ended trial, the progress line, the summary)
is said here, so a notebook or a service decides where it goes: ``log=None`` leaves them to the
``raytower`` logger alone (INFO; Python's logging drops INFO until the caller configures it).
The command line hands in ``console``, which writes to stdout and, on a terminal, redraws the
progress line in place. Tune's callbacks run in the driver process, in the thread that called
``fit``, so they reach the caller's ``log`` through ``say`` without holding it (Tune pickles them).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator

logger = logging.getLogger("raytower")

_sinks: list[Callable[[str], None] | None] = []  # the active ``log`` of each enclosing lines_to


@contextlib.contextmanager
def lines_to(log: Callable[[str], None] | None) -> Iterator[Callable[[str], None]]:
    """Within the block, ``say(line)`` goes to the logger and to ``log`` (None: the logger only).
    Yields ``say``, to hand to what takes a ``log`` callable."""
    _sinks.append(log)
    try:
        yield say
    finally:
        _sinks.pop()


def say(line: str) -> None:
    logger.info(line)
    sink = _sinks[-1] if _sinks else None
    if sink is not None:
        sink(line)


def drawer() -> "Console | None":
    """The console that redraws a line in place, when that is where lines go and it is a terminal."""
    sink = _sinks[-1] if _sinks else None
    return sink if isinstance(sink, Console) and sink.tty else None


class Console:
    """The command line's ``log``: each line to stdout; ``draw`` redraws one line in place."""

    drawn = False

    @property
    def tty(self) -> bool:
        return bool(getattr(sys.stdout, "isatty", lambda: False)())

    def __call__(self, line: str) -> None:
        self.clear()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def draw(self, line: str) -> None:
        sys.stdout.write("\r\033[K" + line)
        sys.stdout.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
            self.drawn = False


console = Console()
