"""raytower._log: a search's lines go to the raytower logger and the caller's log, never straight to stdout."""

import logging
import time

import pytest

from raytower._log import Console, lines_to, say


def test_a_line_goes_to_the_logger_and_to_the_callers_log(caplog):
    lines = []
    with caplog.at_level(logging.INFO, logger="raytower"), lines_to(lines.append):
        say("search: 2 trials")
    assert lines == ["search: 2 trials"]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [("raytower", logging.INFO,
                                                                             "search: 2 trials")]


def test_log_none_leaves_lines_to_the_logger_alone(caplog, capfd):
    with caplog.at_level(logging.INFO, logger="raytower"), lines_to(None):
        say("  trial abc  completed")
    assert caplog.messages == ["  trial abc  completed"]
    assert capfd.readouterr() == ("", "")  # with logging unconfigured, INFO is dropped: nothing printed


@pytest.mark.ray
def test_trial_and_progress_lines_go_to_log_not_stdout(capfd):
    from types import SimpleNamespace

    from raytower.tune._callbacks import StopLog
    from raytower.tune._console import ConsoleReporter

    reporter = ConsoleReporter(2, ["lr"], StopLog(), max_epochs=3)
    trial = SimpleNamespace(trial_id="t1", last_result={"epoch": 3, "best/val/recall@100": 0.25}, config={"lr": 0.01},
                            status="TERMINATED")
    lines = []
    with lines_to(lines.append):
        reporter.on_trial_complete(1, [trial], trial)
        reporter.last = time.monotonic() - 3600  # a progress line is due
        reporter.on_step_end(1, [trial])
        reporter.on_experiment_end([trial])
    assert lines[0].startswith("  trial t1  completed") and "0.2500" in lines[0] and "lr=0.01" in lines[0]
    assert lines[1].startswith("  ended 1 of 2, running 0, best so far 0.2500")
    assert capfd.readouterr() == ("", "")


def test_the_console_writes_lines_to_stdout_and_clears_a_drawn_line(capsys):
    console = Console()
    console.draw("  ended 1 of 2")
    console("  trial t2  asha")
    assert capsys.readouterr().out == "\r\033[K  ended 1 of 2\r\033[K  trial t2  asha\n"
