"""What a data set that reads files does with one it cannot use: ``on_bad_sample``.

* ``"error"`` (default): loading the sample raises a :class:`SampleError` that names the
  file, what is wrong with it, and how to skip such files or list them all
  (``kdforge check-data RECIPE``).
* ``"skip"``: the sample is replaced by the next usable one (index + 1, + 2, ...), so
  batches keep their size; each bad file is warned about once (a :class:`DataWarning`) and
  then skipped silently, and :func:`skipped_samples` counts the replacements.

The record of bad files and the count live in shared memory that DataLoader worker
processes inherit (or receive when spawned), so a count made in a worker reaches the main
process. Under DDP every rank counts the samples it loads.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Sequence
from multiprocessing import context as mp_context
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import get_worker_info

from kdforge.errors import ConfigError, DataError

__all__ = [
    "ON_BAD_SAMPLE",
    "DataProblems",
    "DataWarning",
    "SampleError",
    "SkipLog",
    "SkipsBadSamples",
    "check_policy",
    "skipped_samples",
]

ON_BAD_SAMPLE = ("error", "skip")
MAX_SHOWN = 20  # problems listed in one message
_SLOTS = 257  # skip counters: the main process and up to 256 DataLoader workers


class DataWarning(UserWarning):
    """Something in the data that kdforge worked around (a skipped file, dropped boxes)."""


class SampleError(DataError):
    """One sample cannot be used; the message names the file, ``file`` holds it."""

    def __init__(self, message: str, file: str | Path | None = None) -> None:
        super().__init__(message)  # one positional argument: DataLoader workers re-raise so
        self.file = file


class DataProblems(DataError):
    """Several problems found at once; the message lists them, ``problems`` holds them."""

    def __init__(self, summary: str, problems: Sequence[str], advice: str = "") -> None:
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:MAX_SHOWN])
        more = len(self.problems) - MAX_SHOWN
        shown += f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{summary}\n{shown}" + (f"\n{advice}" if advice else ""))


def check_policy(value: str) -> str:
    """``value`` if it is a valid ``on_bad_sample``, else a ConfigError naming the key."""
    if value not in ON_BAD_SAMPLE:
        raise ConfigError(
            f"data.on_bad_sample must be one of {', '.join(map(repr, ON_BAD_SAMPLE))}, "
            f"got {value!r}"
        )
    return value


class SkipLog:
    """Which samples are bad (a byte each) and how many were replaced, in shared memory.

    Pickled while a process is being spawned (a DataLoader worker), the memory is shared;
    pickled otherwise (``copy.deepcopy``), the copy gets memory of its own.
    """

    def __init__(self, size: int) -> None:
        self._bad = multiprocessing.RawArray("b", max(size, 1))
        self._skips = multiprocessing.RawArray("q", _SLOTS)  # one counter per process: no races

    def __getstate__(self) -> dict[str, Any]:
        if mp_context.get_spawning_popen() is not None:
            return {"bad": self._bad, "skips": self._skips}
        return {"bad": bytes(self._bad), "skips": list(self._skips)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        bad, skips = state["bad"], state["skips"]
        if isinstance(bad, bytes):  # a copy: fresh shared memory holding the same record
            bad, skips = multiprocessing.RawArray("b", bad), multiprocessing.RawArray("q", skips)
        self._bad, self._skips = bad, skips

    def is_bad(self, index: int) -> bool:
        return bool(self._bad[index])

    def mark_bad(self, index: int) -> bool:
        """Mark ``index`` bad; True the first time (then warn)."""
        first = not self._bad[index]
        self._bad[index] = 1
        return first

    def count_skip(self) -> None:
        info = get_worker_info()
        self._skips[0 if info is None else 1 + info.id % (_SLOTS - 1)] += 1

    @property
    def skipped(self) -> int:
        """Replacements made so far, by every process sharing this log."""
        return int(sum(self._skips))

    def bad_indices(self) -> list[int]:
        return np.flatnonzero(np.frombuffer(self._bad, dtype=np.int8)).tolist()


class SkipsBadSamples:
    """Mixin: ``load(index)`` under the ``on_bad_sample`` policy.

    A data set calls :meth:`_init_policy` once its samples are known, implements
    ``load(index)`` (raising :class:`~kdforge.errors.DataError` for an unusable sample) and
    gets ``(index actually used, loaded)`` from :meth:`_load_usable`.
    """

    on_bad_sample: str = "error"
    _skip_log: SkipLog | None = None

    def _init_policy(self, on_bad_sample: str) -> None:
        self.on_bad_sample = check_policy(on_bad_sample)
        self._skip_log = SkipLog(len(self)) if on_bad_sample == "skip" else None

    def _skip_at_start(self, bad: dict[int, str], what: str) -> None:
        """Under ``skip``, mark the samples found bad at construction, with one warning."""
        assert self._skip_log is not None
        for index in bad:
            self._skip_log.mark_bad(index)
        if len(bad) == len(self):
            raise DataProblems(f"{what}: all {len(bad)} samples are unusable:", list(bad.values()))
        shown = "; ".join(list(bad.values())[:3]) + (" ..." if len(bad) > 3 else "")
        warnings.warn(
            f"{what}: skipping {len(bad)} of {len(self)} samples (on_bad_sample='skip'): {shown}",
            DataWarning,
            stacklevel=3,
        )

    @property
    def skipped(self) -> int:
        """Samples replaced so far under ``on_bad_sample='skip'`` (0 under ``error``)."""
        return 0 if self._skip_log is None else self._skip_log.skipped

    def _load_usable(self, index: int) -> tuple[int, Any]:
        log = self._skip_log
        if log is None:
            try:
                return index, self.load(index)
            except DataError as err:
                raise SampleError(
                    f"{err}\nSkip such files with on_bad_sample='skip' (--set "
                    "data.on_bad_sample=skip), or list every bad file first with "
                    "`kdforge check-data RECIPE`",
                    getattr(err, "file", None),
                ) from err
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            if log.is_bad(i):
                continue
            try:
                loaded = self.load(i)
            except DataError as err:
                if log.mark_bad(i):
                    warnings.warn(
                        f"skipping a bad sample (on_bad_sample='skip'; warned once per file): "
                        f"{err}",
                        DataWarning,
                        stacklevel=3,
                    )
                continue
            if i != index:
                log.count_skip()
            return i, loaded
        raise DataError(f"{self!r}: no usable sample is left; every file failed to load")


def skipped_samples(dataset: Any) -> int:
    """Samples replaced so far under ``on_bad_sample='skip'``, 0 for any other data set.

    Looks through wrappers that keep the wrapped data set in ``.dataset`` (``Subset``,
    ``ReducedDataset``, the teacher cache's ``ReplayDataset``). The count includes the
    DataLoader workers' replacements; under DDP it is this rank's.
    """
    for _ in range(8):
        if isinstance(dataset, SkipsBadSamples):
            return dataset.skipped
        dataset = getattr(dataset, "dataset", None)
        if dataset is None:
            break
    return 0
