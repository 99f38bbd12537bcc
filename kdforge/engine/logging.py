"""Run logs: one JSON object per line, TensorBoard scalars, and console messages."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLogger"]


class RunLogger:
    """Appends records to ``RUN_DIR/log.jsonl`` and scalars to TensorBoard (main process only).

    Args:
        run_dir: the run folder.
        enabled: False on non-main processes: every call becomes a no-op.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = (self.run_dir / "log.jsonl").open("a")
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, kind: str, step: int, **values: Any) -> None:
        """Record ``values`` (scalars) under ``kind`` ("train", "val", "teacher", ...)."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{kind}/{key}", value, step)

    def print(self, message: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(message)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._writer.close()
