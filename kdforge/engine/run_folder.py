"""A run folder with one writer: a lock, no leftovers of a killed run, honest logs on resume.

``RUN_DIR/.lock`` holds ``pid@host`` of the process writing the run. A second ``train``
or ``--resume`` into the folder is refused while that process lives; a lock whose process
is gone (same host) is taken over with a message. Temporary files of a checkpoint write
that was killed are removed when the run starts again, and on resume ``log.jsonl`` (and
the TensorBoard events, through ``purge_step``) are cut back to the checkpoint's step, so
no curve repeats a segment.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from pathlib import Path

from kdforge.engine.logging import RunLogger
from kdforge.errors import ConfigError

__all__ = ["RunFolder"]

LOCK = ".lock"
# what a run writes before its first checkpoint: a run that fails before one leaves nothing
_FIRST_FILES = {LOCK, "config.yaml", "log.jsonl", "tensorboard"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunFolder:
    """Open ``path`` for writing one run (the main process; others only read it).

    Args:
        path: the run folder.
        resume: continue the run in ``path`` (it must hold ``last.pt``); otherwise the
            folder must not hold a run yet.
        writer: whether this process writes (False on non-main DDP processes: no lock,
            no files).
    """

    def __init__(self, path: str | Path, resume: bool = False, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.locked = False
        self.created = not self.path.exists()
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(
                f"the run folder {self.path} is a file; set train.out_dir/train.name to a folder"
            )
        last = self.path / "last.pt"
        if resume and not last.is_file():
            raise ConfigError(
                f"--resume {self.path}: no last.pt there, so the run stopped before its first "
                f"epoch ended; start it again with `kdforge train {self.path / 'config.yaml'} "
                "--set train.name=NEW_NAME`"
            )
        if not resume and last.exists():
            raise ConfigError(
                f"{self.path} already holds a run; resume it with --resume {self.path} or pick "
                "another train.name"
            )
        if writer:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(
                    f"cannot create the run folder {self.path} ({err.strerror}); set "
                    "train.out_dir to a folder you can write"
                ) from None
            self._lock()
            self._remove_leftovers()
        self.logger = RunLogger(self.path, enabled=writer)

    def _lock(self) -> None:
        lock, me = self.path / LOCK, f"{os.getpid()}@{socket.gethostname()}"
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = lock.read_text().strip() if lock.exists() else ""
                pid, _, host = owner.partition("@")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    print(f"{self.path}: taking over the lock of process {pid}, which is gone")
                    lock.unlink(missing_ok=True)
                    continue
                if not owner:  # removed meanwhile, or being written: try again
                    continue
                raise ConfigError(
                    f"{self.path} is being written by process {owner}; wait for it to end, or "
                    f"delete {lock} if it is not running (another host cannot be checked)"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.locked = True
            return

    def _remove_leftovers(self) -> None:
        """Temporary files of checkpoint writes that were killed (``.last.pt.*.tmp``)."""
        leftovers = list(self.path.glob(".*.pt.*.tmp"))
        for tmp in leftovers:
            tmp.unlink(missing_ok=True)
        if leftovers:
            print(f"{self.path}: removed {len(leftovers)} unfinished checkpoint file(s)")

    def cut_logs(self, step: int) -> None:
        """Keep only the log records up to ``step`` (the checkpoint being resumed)."""
        if not self.writer:
            return
        log = self.path / "log.jsonl"
        if log.is_file():
            kept = []
            for line in log.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if record.get("step", 0) <= step:
                    kept.append(line)
            tmp = log.with_name(".log.jsonl.tmp")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            os.replace(tmp, log)
        self.logger.purge_step = step + 1

    def close(self, success: bool) -> None:
        """Release the lock; a fresh run that failed before its first checkpoint leaves
        no folder behind."""
        self.logger.close(success)
        if not self.locked:
            return
        (self.path / LOCK).unlink(missing_ok=True)
        self.locked = False
        names = {p.name for p in self.path.iterdir()}
        if not success and self.created and names <= _FIRST_FILES:
            try:
                shutil.rmtree(self.path)
            except OSError as err:  # e.g. a file opened elsewhere: leave it
                if err.errno != errno.ENOENT:
                    print(f"could not remove {self.path}: {err}")
