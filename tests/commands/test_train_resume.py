"""``kdforge train --resume RUN`` through the command line: a run stopped early and resumed
ends bit-identical to one that was never stopped."""

from __future__ import annotations

import json

import pytest
import torch

from kdforge.cli import main

RECIPE = """\
teacher: {name: resnet8}
student: {name: resnet8}
loss:
  ce: {weight: 0.1}
  kd: {weight: 0.9}
optim: {lr: 0.05}
schedule: {epochs: 2, milestones: [1]}
train: {deterministic: true}
"""


def _students_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _last(run) -> dict:
    return torch.load(run / "last.pt", weights_only=False)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def test_cli_resume_matches_an_uninterrupted_run(recipe, tiny_overrides, tmp_path, capsys):
    main(["train", str(recipe), "--set", *tiny_overrides, "train.name=full"])
    # the same run stopped after its first epoch (6 of 12 steps), as if killed there
    main(["train", str(recipe), "--set", *tiny_overrides, "train.name=split", "train.max_steps=6"])
    split = tmp_path / "split"
    stopped = _last(split)
    assert (stopped["epoch"], stopped["step"]) == (1, 6)
    capsys.readouterr()
    main(["train", "--resume", str(split), "--set", "train.max_steps=null"])
    out = capsys.readouterr().out
    assert f"resumed {split} after epoch 1 (step 6)" in out
    assert f"done: {split}" in out
    full, resumed = _last(tmp_path / "full"), _last(split)
    assert (resumed["epoch"], resumed["step"]) == (2, 12)
    assert (full["epoch"], full["step"]) == (2, 12)
    assert _students_equal(full["student"], resumed["student"])
    assert not _students_equal(stopped["student"], resumed["student"])  # it did train on
    assert (
        full["optimizer"]["param_groups"][0]["lr"] == resumed["optimizer"]["param_groups"][0]["lr"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "split", "tiny.yaml"]
    log = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["kind"] == "val"] == [1, 2]


def test_cli_resume_ignores_a_given_recipe(recipe, tiny_overrides, tmp_path, capsys):
    """``kdforge train RECIPE --resume RUN`` continues RUN with its saved config."""
    main(["train", str(recipe), "--set", *tiny_overrides, "train.max_steps=6"])
    run = tmp_path / "run"
    other = tmp_path / "other.yaml"
    other.write_text(RECIPE.replace("lr: 0.05", "lr: 0.5"))
    capsys.readouterr()
    main(["train", str(other), "--resume", str(run), "--set", "train.max_steps=null"])
    captured = capsys.readouterr()
    assert "is ignored" in captured.err
    assert f"resumed {run} after epoch 1" in captured.out
    last = _last(run)
    assert last["step"] == 12
    assert last["config"]["optim"]["lr"] == 0.05


def test_cli_resume_of_a_folder_without_a_run_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="--resume .*no config.yaml"):
        main(["train", "--resume", str(tmp_path / "nothing")])
