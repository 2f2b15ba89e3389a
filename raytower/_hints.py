"""The commands raytower prints for the user to run next: retrain, resume, report, export.

Each is a command that runs from the user's shell as printed (``this_command``): a fresh shell after
``make`` has no ``raytower`` on its PATH.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from raytower._flags import data_flags_given
from raytower.names import BEST_CONFIG


def this_command() -> list[str]:
    """How to run raytower again from this shell: ``raytower`` when that is the script running now,
    else the path that ran it (``.venv/bin/raytower`` after ``make``, whose venv a fresh shell has not
    activated), else ``python -m raytower.cli``."""
    import shutil

    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.name != "raytower" or not script.exists():
        return [sys.executable, "-m", "raytower.cli"]
    on_path = shutil.which("raytower")
    if on_path and os.path.samefile(on_path, script):
        return ["raytower"]
    return [os.path.relpath(script) if not script.is_absolute() or Path.cwd() in script.parents else str(script)]


def retrain_command(args) -> str:
    """`raytower train` on the same data, prepared the same way: every data flag that was given."""
    data = ["--data", args.data, *data_flags_given(args)]
    return shlex.join([*this_command(), "train", "--config", str(Path(args.out) / BEST_CONFIG), *data])


def resume_command(argv: list[str]) -> str:
    return shlex.join([*this_command(), *argv, *([] if "--resume" in argv else ["--resume"])])


def next_steps(out: Path, study_url: str | None) -> list[str]:
    """What to do with a finished search, as commands that run from here."""
    me = shlex.join(this_command())
    db = study_url or f"sqlite:///{out / 'optuna.db'}"
    return [f"  report:      {me} report {shlex.quote(str(out))}   (leaderboard, plots, at a glance)",
            f"  export:      {me} export {shlex.quote(str(out))} --out MODEL_DIR   (then: recommend, examples/serve.py)",
            f"  TensorBoard: tensorboard --logdir {shlex.quote(str(out / 'tune'))}",
            f"  Optuna:      optuna-dashboard {shlex.quote(db)}   (pip install optuna-dashboard)"]
