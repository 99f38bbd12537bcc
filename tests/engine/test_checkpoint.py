import pytest
import torch

from kdforge.engine import checkpoint
from kdforge.engine.checkpoint import load_checkpoint, save_checkpoint
from kdforge.errors import CheckpointError


def test_round_trip_and_no_temp_files_left(tmp_path):
    path = save_checkpoint({"w": torch.arange(3)}, tmp_path / "sub" / "last.pt")
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"version": 1}, tmp_path / "last.pt")

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"version": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
