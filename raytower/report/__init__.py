"""`raytower report` and `raytower compare`: a search's results as a leaderboard and pictures.

Reads what a search wrote (trials.parquet or the trial directories, best_config.json, optuna.db,
setup.json) and writes DIR/report/: PNG plots (matplotlib, Agg) and report.md tying them together.
Works on a finished or an interrupted search.

    _facts.py      what the report says: the trials, the knobs searched (the recorded space's),
                   the leaderboard, the facts at a glance, importance, popularity, compare
    _figures.py    the pictures
    _markdown.py   report.md, and write_report, which runs the three
"""

from raytower.report._facts import (Importance, at_a_glance, compare, importance, leaderboard, load_experiment,
                                    searched_knobs, varying_knobs)
from raytower.report._figures import plot_knobs
from raytower.report._markdown import markdown_table, write_report

__all__ = ["Importance", "at_a_glance", "compare", "importance", "leaderboard", "load_experiment", "markdown_table",
           "plot_knobs", "searched_knobs", "varying_knobs", "write_report"]
