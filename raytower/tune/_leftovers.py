"""The local Ray a search started, by PID, so that ``--resume`` can stop what a killed search left.

A search killed with SIGKILL leaves its local Ray running for minutes: the raylet, the GCS, and
trial workers that still write checkpoints into ``--out``. The driver records its Ray processes
(its descendants once ``ray.init`` returns, with their start times, against PID reuse) in
``OUT/.ray-processes.json``; ``--resume``, once it holds ``--out`` (so that search's driver is gone),
stops those still running and their descendants (the trial workers the raylet started), then goes on.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

RAY_PROCESSES = ".ray-processes.json"


def record_ray_processes(out: Path) -> None:
    """The driver's descendants now, just after ``ray.init`` started the local Ray."""
    import psutil

    from raytower._io import write_json

    procs = []
    for p in psutil.Process().children(recursive=True):
        try:
            procs.append({"pid": p.pid, "started": p.create_time()})
        except psutil.Error:
            pass
    write_json(out / RAY_PROCESSES, {"host": socket.gethostname(), "driver": os.getpid(), "processes": procs})


def stop_leftover_ray(out: Path, log=print, timeout_s: float = 30.0) -> None:
    """Stop (SIGTERM, then SIGKILL) the Ray processes an earlier session of this search recorded and
    that still run, with their descendants; one line says so. Call only while holding ``out``: then
    the driver that recorded them is gone, and they are orphans."""
    import psutil

    from raytower._io import read_json
    from raytower.errors import ConfigError, RaytowerError

    try:
        doc = read_json(out / RAY_PROCESSES, None)
    except ConfigError:
        return  # damaged: nothing to go by
    if not isinstance(doc, dict) or doc.get("host") != socket.gethostname():
        return  # none recorded, or on another machine (a cluster's head): not this one's to stop
    left = _still_running(doc.get("processes") or [])
    if not left:
        return
    log(f"--resume: stopping {len(left)} Ray process(es) the interrupted search left running "
        f"(PIDs {', '.join(str(p.pid) for p in left[:8])}{' ...' if len(left) > 8 else ''})")
    for p in left:
        _signal(p, "terminate")
    _, left = psutil.wait_procs(left, timeout=timeout_s)
    for p in left:
        _signal(p, "kill")
    _, left = psutil.wait_procs(left, timeout=timeout_s)
    if left:
        raise RaytowerError(f"--resume: Ray processes of the interrupted search still run (PIDs "
                            f"{', '.join(str(p.pid) for p in left)}): stop them, then resume", out)


def _still_running(recorded: list) -> list:
    """The recorded processes still alive (same PID, same start time) and all their descendants."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for r in recorded:
        try:
            p = psutil.Process(int(r["pid"]))
            if abs(p.create_time() - float(r["started"])) > 1.0:
                continue  # the PID was reused
            found[p.pid] = p
            for child in p.children(recursive=True):
                found[child.pid] = child
        except (psutil.Error, KeyError, TypeError, ValueError):
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _signal(p, how: str) -> None:
    import psutil

    try:
        getattr(p, how)()
    except psutil.Error:
        pass
