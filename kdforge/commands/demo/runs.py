"""What the demos and ``benchmarks/shapes_kd.py`` share: run folders, CPU threads, a timed fit."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["clear_run_dir", "clear_run_dirs", "cpu_threads", "fit_run", "prepare_shapes"]


def clear_run_dirs(out: str | Path, names: Sequence[str]) -> list[str]:
    """Delete the run folders ``out/<name>`` that exist; return the names deleted.

    Every one must be a kdforge run folder (hold ``config.yaml``): otherwise nothing is
    deleted and :class:`~kdforge.errors.DataError` names the first that is not.
    """
    from kdforge.errors import DataError

    folders = [Path(out) / name for name in names if (Path(out) / name).exists()]
    for folder in folders:
        if not (folder / "config.yaml").is_file():
            raise DataError(f"{folder} exists and is not a kdforge run folder; pick another --out")
    for folder in folders:
        shutil.rmtree(folder)
    return [folder.name for folder in folders]


def clear_run_dir(run_dir: str | Path) -> None:
    """Delete ``run_dir`` if it is a kdforge run folder; refuse any other folder."""
    run_dir = Path(run_dir)
    clear_run_dirs(run_dir.parent, [run_dir.name])


def prepare_shapes(
    out: Path, run: str, num_train: int, num_val: int, image_size: int, seed: int
) -> Path:
    """Clear ``out/run`` (only a kdforge run folder) and write the shapes data to
    ``out/shapes``; return its root."""
    from kdforge.data.shapes import write_shapes_dataset

    clear_run_dir(out / run)
    return write_shapes_dataset(
        out / "shapes", num_train, num_val, (image_size, image_size), seed=seed
    )


@contextmanager
def cpu_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block on ``num_threads`` torch CPU threads (None: unchanged), then restore."""
    import torch

    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_run(overrides: list[str], recipe_name: str) -> tuple[Any, dict[str, Any], float]:
    """Build the run that ``overrides`` describe (over the defaults) and train it.

    Returns:
        the trainer, its final validation metrics and the seconds that building and
        training took.
    """
    from kdforge.config import load_config
    from kdforge.engine.build import build_trainer

    start = time.perf_counter()
    trainer = build_trainer(load_config(None, overrides), recipe_name=recipe_name)
    final = trainer.fit()
    return trainer, final, time.perf_counter() - start
