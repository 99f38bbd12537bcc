"""``compare``: final and best metric of each run from its log, a table, CSV and PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from kdforge.cli import main
from kdforge.commands.compare import read_run


def _run(folder: Path, loss: str, values: list[tuple[int, float]], teacher: float | None = None):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"task: classification\nstudent: {{name: resnet8}}\n{loss}")
    records = []
    if teacher is not None:
        records.append({"kind": "teacher", "step": 0, "top1": teacher})
    for epoch, value in values:
        losses = {"ce": 1.0 / epoch, "kd": 0.5}
        extras = {"lr": 0.1, "images_per_s": 100.0, "time": 1.0}
        records.append(
            {"kind": "train", "step": epoch * 10, "epoch": epoch - 1, **extras, **losses}
        )
        records.append({"kind": "val", "step": epoch * 10, "epoch": epoch, "top1": value})
    (folder / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


def test_final_and_best_values(tmp_path):
    run = read_run(
        _run(tmp_path / "kd", "loss: {ce: {}, kd: {}}", [(1, 50.0), (2, 70.0), (3, 60.0)], 80.0)
    )
    assert run.final == 60.0 and run.best == (70.0, 2)
    assert run.report == "best" and run.reported == 70.0  # classification: mdistiller's
    assert run.loss_terms == ["ce", "kd"] and run.teacher == 80.0
    assert run.losses[0] == pytest.approx(1.5) and run.steps == [10, 20, 30]  # ce + kd


def test_ties_pick_the_later_epoch_and_a_resumed_epoch_keeps_the_last_record(tmp_path):
    folder = _run(tmp_path / "r", "", [(1, 70.0), (2, 70.0), (2, 65.0)])
    run = read_run(folder)
    assert run.epochs == [1, 2] and run.values == [70.0, 65.0] and run.best == (70.0, 1)
    run = read_run(_run(tmp_path / "t", "", [(1, 70.0), (2, 70.0)]))
    assert run.best == (70.0, 2) and run.loss_terms == ["ce"]


def test_command_prints_a_table_and_writes_csv_and_png(tmp_path, capsys):
    base = _run(tmp_path / "baseline", "", [(1, 40.0), (2, 55.0)])
    kd = _run(tmp_path / "kd", "loss: {ce: {}, kd: {}}", [(1, 45.0), (2, 61.5), (3, 60.0)], 75.0)
    out = tmp_path / "cmp"
    main(["compare", str(base), str(kd), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "61.5 (2)" in printed and "ce+kd" in printed
    rows = list(csv.reader((out / "compare.csv").open()))
    assert rows[0][:9] == [
        "run",
        "student",
        "losses",
        "metric",
        "reported",
        "report",
        "final",
        "best",
        "best_epoch",
    ]
    assert rows[2][4:9] == ["61.5", "best", "60.0", "61.5", "2"]
    assert rows[1][4:9] == ["55.0", "best", "55.0", "55.0", "2"]
    with Image.open(out / "compare.png") as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 300


def test_a_folder_without_a_log_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(SystemExit, match="config.yaml"):
        main(["compare", str(tmp_path / "x")])
