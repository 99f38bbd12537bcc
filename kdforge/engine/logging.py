"""Run logs: one JSON object per line, TensorBoard scalars, and console messages."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLogger"]


class RunLogger:
    """Appends records to ``RUN_DIR/log.jsonl`` and scalars to TensorBoard (main process only).

    The files are opened at the first record, so a run that fails before logging anything
    writes nothing. ``purge_step`` (set on resume) makes TensorBoard drop the events from
    that step on that an interrupted run had written.

    Args:
        run_dir: the run folder.
        enabled: False on non-main processes: every call becomes a no-op.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.purge_step: int | None = None
        self._jsonl = None
        self._writer = None

    def _open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.run_dir / "log.jsonl").open("a")
        self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.purge_step)

    def log(self, kind: str, step: int, **values: Any) -> None:
        """Record ``values`` (scalars) under ``kind`` ("train", "val", "teacher", ...)."""
        if not self.enabled:
            return
        if self._jsonl is None:
            self._open()
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
        if self._jsonl is not None:
            self._jsonl.close()
            self._writer.close()
            self._jsonl = self._writer = None
