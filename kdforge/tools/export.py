"""Export the student of a run as a plain ``.safetensors`` file (connectors dropped)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from kdforge.engine.checkpoint import load_checkpoint

__all__ = ["export_student", "find_checkpoint"]


def find_checkpoint(run: str | Path, which: str = "best") -> Path:
    """``RUN_DIR/{which}.pt`` (falling back to ``last.pt``), or ``run`` itself if a file."""
    run = Path(run)
    if run.is_file():
        return run
    for name in (f"{which}.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise FileNotFoundError(f"{run} holds no {which}.pt or last.pt; is it a kdforge run folder?")


def export_student(run: str | Path, out: str | Path, which: str = "best") -> Path:
    """Write the student weights of ``run`` to ``out`` (safetensors) and return its path.

    The file loads back with ``create_model(name, pretrained=out)``; the model name and
    number of classes are stored in its metadata.
    """
    checkpoint = load_checkpoint(find_checkpoint(run, which))
    state = {k: v.contiguous() for k, v in checkpoint["student"].items()}
    metadata = {
        "student_name": str(checkpoint.get("student_name", "")),
        "num_classes": str(checkpoint.get("num_classes", "")),
        "epoch": str(checkpoint.get("epoch", "")),
        "metrics": json.dumps(checkpoint.get("metrics", {})),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=metadata)
    return out
