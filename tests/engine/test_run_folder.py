"""One writer per run folder, no leftovers, logs cut back on resume, a user's files kept."""

import json
import os
import socket
import subprocess
import sys
from collections import Counter

import pytest
import torch

from kdforge.config import load_config
from kdforge.engine.build import build_trainer
from kdforge.engine.checkpoint import save_checkpoint
from kdforge.engine.run_folder import LOCK, RunFolder
from kdforge.errors import CheckpointError, ConfigError

KD = [
    "teacher.name=resnet8",
    "student.name=resnet8",
    "loss={ce: {weight: 0.1}, kd: {weight: 0.9}}",
    "schedule.epochs=2",
]


def _trainer(overrides, resume=None):
    return build_trainer(load_config(None, overrides), "test", resume=resume)


def _records(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_second_writer_is_refused_and_the_lock_released_at_the_end(tmp_path):
    first = RunFolder(tmp_path / "run")
    assert (tmp_path / "run" / LOCK).read_text() == f"{os.getpid()}@{socket.gethostname()}"
    with pytest.raises(ConfigError, match="being written by process"):
        RunFolder(tmp_path / "run")
    first.close(success=True)
    assert not (tmp_path / "run" / LOCK).exists()
    RunFolder(tmp_path / "run").close(success=True)


def test_a_stale_lock_is_taken_over(tmp_path, capsys):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(f"{gone.stdout.strip()}@{socket.gethostname()}")
    folder = RunFolder(run)
    assert "taking over the lock" in capsys.readouterr().out
    assert (run / LOCK).read_text().startswith(f"{os.getpid()}@")
    folder.close(success=True)


def test_leftovers_of_a_killed_checkpoint_write_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"student": {}}, run / "last.pt")
    (run / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    RunFolder(run, resume=True).close(success=True)
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]


def test_resume_without_a_checkpoint_says_how_to_start_again(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="stopped before its first epoch ended.*train.name"):
        RunFolder(tmp_path / "run", resume=True)


def test_a_run_folder_that_is_a_file_names_the_keys(tmp_path, tiny_overrides):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(ConfigError, match="train.out_dir/train.name"):
        _trainer([*tiny_overrides, *KD])
    assert (tmp_path / "run").read_text() == "not a folder"  # the user's file is untouched


def test_an_out_dir_that_cannot_be_created_names_the_key(tmp_path, tiny_overrides):
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(ConfigError, match="cannot create the run folder.*train.out_dir"):
        _trainer([*tiny_overrides, *KD, f"train.out_dir={tmp_path / 'file' / 'runs'}"])


def test_a_teacher_at_chance_leaves_no_run_folder(tiny_overrides, tmp_path):
    overrides = [o for o in tiny_overrides if "check_teacher" not in o]
    trainer = _trainer([*overrides, *KD])
    assert (tmp_path / "run" / "config.yaml").is_file()
    with pytest.raises(ConfigError, match="chance"):
        trainer.fit()
    assert not (tmp_path / "run").exists()


def test_a_failed_build_leaves_no_run_folder(tiny_overrides, tmp_path):
    with pytest.raises(ConfigError, match="no_such_model"):
        _trainer([*tiny_overrides, *KD, "student.name=no_such_model"])
    assert not (tmp_path / "run").exists()


def test_checkpoints_follow_the_umask(tiny_overrides, tmp_path):
    old = os.umask(0o022)
    try:
        _trainer([*tiny_overrides, *KD, "train.max_steps=1"]).fit()
    finally:
        os.umask(old)
    for name in ("last.pt", "best.pt"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644


def test_resume_cuts_the_log_back_and_keeps_config_yaml(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    _trainer([*tiny_overrides, *KD, "train.max_steps=6"]).fit()  # epoch 1 of 2, step 6
    config = (run / "config.yaml").read_text()
    with (run / "log.jsonl").open("a") as log:  # what a run killed after step 6 had logged
        log.write(json.dumps({"kind": "train", "step": 8, "epoch": 1, "ce": 1.0}) + "\n")
        log.write('{"kind": "train", "st')  # a line cut short by the kill
    resumed = build_trainer(load_config(run / "config.yaml", ["train.max_steps=null"]), resume=run)
    resumed.fit()
    records = _records(run)
    keys = Counter((r["kind"], r["step"]) for r in records)
    assert max(keys.values()) == 1  # no record twice
    assert not any(r.get("ce") == 1.0 for r in records)  # the orphan record is gone
    assert {r["step"] for r in records if r["kind"] == "val"} == {6, 12}
    assert (run / "config.yaml").read_text() == config
    assert not (run / LOCK).exists()


def test_a_truncated_last_checkpoint_is_named(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    _trainer([*tiny_overrides, *KD, "train.max_steps=6"]).fit()
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="last.pt cannot be read"):
        build_trainer(load_config(run / "config.yaml"), resume=run)
    assert (run / "best.pt").is_file() and not (run / LOCK).exists()


def test_a_checkpoint_of_another_model_is_named(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    _trainer([*tiny_overrides, *KD, "train.max_steps=6"]).fit()
    state = torch.load(run / "last.pt", weights_only=False)
    state["student"] = {"conv1.weight": torch.zeros(1)}
    save_checkpoint(state, run / "last.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        build_trainer(load_config(run / "config.yaml"), resume=run)


def test_resume_refuses_changes_to_the_run_and_logs_the_allowed_ones(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    _trainer([*tiny_overrides, *KD, "train.max_steps=6"]).fit()
    saved = run / "config.yaml"
    with pytest.raises(ConfigError, match=r"would change the run: optim.lr: 0.05 -> 0.9"):
        build_trainer(load_config(saved, ["optim.lr=0.9"]), resume=run)
    edited = saved.read_text().replace("epochs: 2", "epochs: 5")
    saved.write_text(edited)  # an edited config.yaml is a change too
    with pytest.raises(ConfigError, match=r"schedule.epochs: 2 -> 5"):
        build_trainer(load_config(saved), resume=run)
    saved.write_text(edited.replace("epochs: 5", "epochs: 2"))
    resumed = build_trainer(
        load_config(saved, ["train.max_steps=null", "train.log_every=3"]), resume=run
    )
    resumed.fit()
    (record,) = [r for r in _records(run) if r["kind"] == "resume"]
    assert record["changed"] == ["train.log_every: 1 -> 3", "train.max_steps: 6 -> None"]
