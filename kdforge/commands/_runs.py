"""Reading run folders: the ``config.yaml`` a run used and the records of its ``log.jsonl``.

The trainer appends one JSON object per line to ``log.jsonl``, each with a ``kind``:
``"train"`` (running means of the named losses at ``step``), ``"val"`` (the task's metrics
after ``epoch``) or ``"teacher"`` (the teacher's metrics before training). A resumed run
may log an epoch twice; the later record wins.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdforge.errors import DataError

__all__ = ["evaluations", "read_config", "read_log", "records_of"]


def _file(run_dir: str | Path, name: str) -> Path:
    path = Path(run_dir) / name
    if not path.is_file():
        raise DataError(f"{run_dir}: no {name}; is it a kdforge run folder?")
    return path


def read_config(run_dir: str | Path) -> DictConfig:
    """The recipe the run in ``run_dir`` was trained with (its ``config.yaml``)."""
    return OmegaConf.load(_file(run_dir, "config.yaml"))


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/log.jsonl``, in the order logged (blank lines skipped)."""
    path = _file(run_dir, "log.jsonl")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not JSON ({err.msg})") from None
    return records


def records_of(records: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The records of one ``kind`` (``"train"``, ``"val"``, ``"teacher"``), in order."""
    return [record for record in records if record.get("kind") == kind]


def evaluations(records: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, list[float]]:
    """``{"epoch": [...], key: [...] for key in keys}``, one entry per evaluated epoch.

    Epochs come in increasing order; of two records of one epoch the later wins; a
    ``"val"`` record without every key is skipped.
    """
    by_epoch = {
        int(record["epoch"]): [float(record[key]) for key in keys]
        for record in records_of(records, "val")
        if all(key in record for key in keys)
    }
    epochs = sorted(by_epoch)
    curves = {"epoch": [float(epoch) for epoch in epochs]}
    for i, key in enumerate(keys):
        curves[key] = [by_epoch[epoch][i] for epoch in epochs]
    return curves
