import json
import os
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).parents[2] / "examples" / "custom_hook.py"


def test_custom_hook_example_logs_its_records(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(tmp_path), "--every", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "largest gradient norm" in proc.stdout
    (run,) = tmp_path.iterdir()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    norms = [r["norm"] for r in records if r["kind"] == "grad_norm"]
    last = torch.load(run / "last.pt", weights_only=False)
    assert len(norms) == last["step"] and all(n > 0 for n in norms)  # one record per step
    assert last["hooks"]["GradNormHook"]["largest"] == max(norms)
