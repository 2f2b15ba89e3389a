"""A command line that answers at once: --help and a bad flag import none of the heavy stack."""

import resource
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "optuna", "numpy", "pandas", "pyarrow")
# main() as the console script runs it, then the heavy modules it imported on the way.
PROBE = """
import sys
from raytower.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY", sorted(m for m in %r if m in sys.modules), file=sys.stderr)
""" % (HEAVY,)


@pytest.mark.parametrize("argv", [["--help"], ["tune", "--help"], ["train", "--epochs", "x"],
                                  ["tune", "--num-samples", "0"], ["tune", "--bogus"], ["export", "--help"]])
def test_help_and_flag_errors_import_nothing_heavy(argv):
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert out.stderr.strip().splitlines()[-1] == "HEAVY []", out.stderr


def test_help_takes_at_most_0_3_cpu_seconds():
    """The console script's own cost (interpreter start included), the least of three runs: one
    measurement on a shared machine can catch another process's cache misses."""
    script = [sys.executable, "-m", "raytower.cli", "--help"]
    costs = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(script, capture_output=True, check=True, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        costs.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    assert min(costs) <= 0.3, costs
