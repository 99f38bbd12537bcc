"""Checking a data set before training: decode every sample, report every problem at once.

``kdforge check-data RECIPE`` runs :func:`check_dataset` on the recipe's splits. A problem
is a sample training would fail on (or skip, under ``on_bad_sample="skip"``); a note is
something worth knowing that is no error (boxes dropped as mmdetection drops them, images
that carry an EXIF rotation kdforge does not apply).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from kdforge.data.decode import exif_rotation
from kdforge.errors import DataError

__all__ = ["CheckReport", "check_dataset"]

_CHUNK = 1024  # indices in flight at once: bounded memory on ImageNet-sized sets


@dataclass
class CheckReport:
    """What :func:`check_dataset` found in one data set."""

    name: str
    size: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _base(dataset: Any) -> Any:
    """The data set that reads the files, below wrappers that keep it in ``.dataset``."""
    for _ in range(8):
        if hasattr(dataset, "load") or getattr(dataset, "dataset", None) is None:
            return dataset
        dataset = dataset.dataset
    return dataset


def _check_one(dataset: Any, index: int) -> tuple[str | None, str | None]:
    """``(problem, EXIF rotation)`` of sample ``index``; each None when there is none."""
    try:
        dataset.load(index)
    except DataError as err:
        return str(err), None
    file = dataset.sample_file(index) if hasattr(dataset, "sample_file") else None
    return None, (exif_rotation(file) if file is not None else None)


def _in_chunks(pool: ThreadPoolExecutor, dataset: Any, n: int) -> Iterator[tuple]:
    for start in range(0, n, _CHUNK):
        indices = range(start, min(start + _CHUNK, n))
        yield from pool.map(lambda i: _check_one(dataset, i), indices)


def check_dataset(
    dataset: Any, name: str = "data", workers: int = 4, progress: bool = True
) -> CheckReport:
    """Decode every image (and mask) of ``dataset`` and check it as loading would.

    Args:
        dataset: a kdforge data set, or a wrapper of one (``.dataset``). Data sets held in
            memory (CIFAR, digits) have nothing to decode: the report says so in a note.
        name: the split's name, for the progress bar and the report.
        workers: decoding threads (Pillow and OpenCV decode outside the GIL).
        progress: show a tqdm progress bar (on stderr).

    Returns:
        every problem (one line each, naming the file) and note.
    """
    base = _base(dataset)
    report = CheckReport(name, len(dataset), notes=list(getattr(base, "notes", [])))
    if not hasattr(base, "load"):
        report.notes.append(f"{type(base).__name__} is read from memory: no files to decode")
        return report
    rotated: list[str] = []
    n = len(base)
    bar = tqdm(total=n, desc=f"checking {name}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, bar:
        for index, (problem, rotation) in enumerate(_in_chunks(pool, base, n)):
            if problem is not None:
                report.problems.append(problem)
            if rotation is not None:
                rotated.append(f"{base.sample_file(index)} ({rotation})")
            bar.update()
    if rotated:
        shown = ", ".join(rotated[:3]) + (" ..." if len(rotated) > 3 else "")
        report.notes.append(
            f"{len(rotated)} image(s) carry an EXIF orientation, which kdforge does not apply "
            f"(as torchvision does not): {shown}; save them upright if it matters"
        )
    return report
