import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "plain_loop.py"


def test_plain_loop_example_runs_and_reports_accuracy():
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread, like the in-process tests
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teacher top-1" in proc.stdout and "student top-1" in proc.stdout
    assert "hint" in proc.stdout  # the FitNet term ran through the Distiller
