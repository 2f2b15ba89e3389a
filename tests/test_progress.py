"""Progress: an ETA in place on a terminal, at most one line every 30 s in a log."""

import io

from raytower._progress import LOG_EVERY_S, Progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_in_a_log_a_line_at_most_every_30_s_with_an_eta():
    clock, lines = Clock(), []
    bar = Progress("lightgcn", 100, log=lines.append, stream=io.StringIO(), now=clock)
    for step in range(1, 101):
        clock.t = step * 1.0  # one step a second: 100 s in all
        bar.update(step, lambda: "loss 0.5")
    bar.close("loss 0.4")
    assert len(lines) == 100 // int(LOG_EVERY_S) + 1  # at 30, 60 and 90 s, then the summary
    assert lines[0] == "  lightgcn  30%  loss 0.5  ETA 1:10"
    assert lines[-1] == "  lightgcn: loss 0.4 (in 1:40)"


def test_on_a_terminal_the_line_is_redrawn_in_place_and_cleared():
    clock, lines, term = Clock(), [], Terminal()
    bar = Progress("epoch 3", 10, log=lines.append, stream=term, now=clock)
    for step in range(1, 11):
        clock.t = step * 2.0
        bar.update(step, f"batch {step}/10")
    bar.close()
    out = term.getvalue()
    assert out.count("\r") >= 10 and "epoch 3  50%  batch 5/10  ETA 0:10" in out
    assert out.endswith("\r") and lines == []  # nothing left in the log or on the screen
