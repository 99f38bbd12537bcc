"""Run logs: one JSON object per line, TensorBoard scalars, and console messages."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = ["RunLogger", "Tracker"]


class Tracker(Protocol):
    """An experiment tracker's run that receives the logger's scalars
    (:mod:`kdforge.engine.trackers`)."""

    def log_scalars(self, scalars: dict[str, float], step: int) -> None: ...

    def finish(self, success: bool) -> None: ...


class RunLogger:
    """Appends records to ``RUN_DIR/log.jsonl`` and scalars to TensorBoard (main process only).

    The files are opened at the first record, so a run that fails before logging anything
    writes nothing. ``purge_step`` (set on resume) makes TensorBoard drop the events from
    that step on that an interrupted run had written. ``tensorboard`` (set before the first
    record) switches the TensorBoard events off; ``trackers`` receive the same scalars as
    TensorBoard (``<kind>/<key>``) and are finished by :meth:`close`.

    Args:
        run_dir: the run folder.
        enabled: False on non-main processes: every call becomes a no-op.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.purge_step: int | None = None
        self.tensorboard = True
        self.trackers: list[Tracker] = []
        self._jsonl = None
        self._writer = None

    def _open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.run_dir / "log.jsonl").open("a")
        if self.tensorboard:
            events = str(self.run_dir / "tensorboard")
            self._writer = SummaryWriter(events, purge_step=self.purge_step)

    def log(self, kind: str, step: int, **values: Any) -> None:
        """Record ``values`` (scalars) under ``kind`` ("train", "val", "teacher", ...)."""
        if not self.enabled:
            return
        if self._jsonl is None:
            self._open()
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        scalars = {
            f"{kind}/{key}": value
            for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
        for tracker in self.trackers:
            tracker.log_scalars(scalars, step)

    def print(self, message: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(message)

    def close(self, success: bool = True) -> None:
        """Close the files and finish the trackers' runs (as failed unless ``success``)."""
        for tracker in self.trackers:
            tracker.finish(success)
        self.trackers = []
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
