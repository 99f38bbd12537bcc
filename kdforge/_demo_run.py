"""Shared by the demos and ``benchmarks/shapes_kd.py``: run folders, CPU threads, a timed fit."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def clear_run_dir(run_dir: str | Path) -> None:
    """Delete ``run_dir`` if it is a kdforge run folder (has ``config.yaml``); refuse otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not (run_dir / "config.yaml").is_file():
        raise FileExistsError(f"{run_dir} exists and is not a kdforge run; pick another --out")
    shutil.rmtree(run_dir)


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


def fit_run(overrides: list[str], recipe_name: str) -> tuple[Any, dict[str, float], float]:
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
