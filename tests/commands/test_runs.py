"""Reading run folders (``kdforge.commands._runs``) and clearing them (``demo.runs``)."""

from __future__ import annotations

import json

import pytest

from kdforge.commands._runs import evaluations, read_config, read_log, records_of
from kdforge.commands.demo.runs import clear_run_dir, clear_run_dirs
from kdforge.errors import DataError


def _write(folder, *records):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("student: {name: resnet8}\n")
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    return folder


def test_records_and_evaluations(tmp_path):
    run = _write(
        tmp_path / "run",
        {"kind": "teacher", "step": 0, "top1": 90.0},
        {"kind": "train", "step": 5, "epoch": 0, "ce": 2.0},
        {"kind": "val", "step": 5, "epoch": 1, "top1": 40.0, "top5": 80.0},
        {"kind": "val", "step": 9, "epoch": 2, "top1": 55.0},  # no top5: skipped below
        {"kind": "val", "step": 9, "epoch": 1, "top1": 45.0, "top5": 85.0},  # resumed: wins
    )
    assert read_config(run).student.name == "resnet8"
    records = read_log(run)
    assert len(records) == 5 and records_of(records, "train")[0]["ce"] == 2.0
    assert evaluations(records, ["top1"]) == {"epoch": [1.0, 2.0], "top1": [45.0, 55.0]}
    assert evaluations(records, ["top1", "top5"]) == {
        "epoch": [1.0],
        "top1": [45.0],
        "top5": [85.0],
    }


def test_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(DataError, match="no config.yaml"):
        read_config(tmp_path)
    (tmp_path / "log.jsonl").write_text('{"kind": "val"}\nnot json\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: not JSON"):
        read_log(tmp_path)


def test_clearing_deletes_runs_only(tmp_path):
    _write(tmp_path / "a", {"kind": "train", "step": 1})
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="not a kdforge run"):
        clear_run_dirs(tmp_path, ["a", "b"])
    assert (tmp_path / "a").is_dir()  # nothing deleted when one folder is foreign
    assert clear_run_dirs(tmp_path, ["a", "c"]) == ["a"]
    assert not (tmp_path / "a").exists()
    clear_run_dir(tmp_path / "missing")
