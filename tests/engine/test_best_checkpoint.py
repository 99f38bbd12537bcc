"""``best.pt`` holds the weights of the best evaluation, not the last or the worst one.

The evaluation is replaced by a known metric sequence, so the epoch that ``best.pt`` must
hold is known; the student's weights are recorded at each evaluation to compare with.
"""

from __future__ import annotations

import json

import pytest
import torch

from kdforge.config import load_config
from kdforge.engine.build import build_trainer
from kdforge.engine.hooks import EvalHook

STUDENT = [
    "student.name=resnet8",
    "schedule.epochs=3",
    "schedule.milestones=[2]",
    "optim.lr=0.05",
    "train.deterministic=true",
]


def _trainer(overrides, resume=None):
    return build_trainer(load_config(None, overrides), "best", resume=resume)


def _script_evaluation(trainer, top1_by_epoch: dict[int, float], snapshots: dict) -> None:
    """Make the student's evaluation after epoch ``e`` report ``top1_by_epoch[e]`` and
    record the weights it saw."""
    hook = trainer.hook(EvalHook)
    assert hook is not None and hook.metric == "top1"

    def evaluate(model):
        assert model is trainer.distiller.student
        snapshots[trainer.epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"top1": top1_by_epoch[trainer.epoch], "top5": 100.0, "count": 24}

    hook.evaluate = evaluate


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("sequence", "best_epoch"),
    [
        ([10.0, 30.0, 20.0], 2),  # the best in the middle: neither the first nor the last
        ([30.0, 10.0, 20.0], 1),  # the best first: later, worse epochs must not replace it
        ([10.0, 20.0, 30.0], 3),  # rising: each epoch replaces the previous one
    ],
)
def test_best_checkpoint_holds_the_best_epoch(tiny_overrides, tmp_path, sequence, best_epoch):
    trainer = _trainer([*tiny_overrides, *STUDENT])
    snapshots: dict[int, dict] = {}
    _script_evaluation(trainer, dict(enumerate(sequence, start=1)), snapshots)
    trainer.fit()
    assert sorted(snapshots) == [1, 2, 3]
    assert not _same(snapshots[1], snapshots[2])  # training changed the weights
    assert not _same(snapshots[2], snapshots[3])
    assert trainer.best == max(sequence)

    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert best["best"] == max(sequence)
    assert best["epoch"] == best_epoch
    assert best["metrics"]["top1"] == max(sequence)
    assert _same(best["student"], snapshots[best_epoch])
    for epoch in {1, 2, 3} - {best_epoch}:
        assert not _same(best["student"], snapshots[epoch])

    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert last["epoch"] == 3 and last["best"] == max(sequence)
    assert last["metrics"]["top1"] == sequence[-1]
    assert _same(last["student"], snapshots[3])
    records = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    val = [json.loads(r) for r in records if json.loads(r)["kind"] == "val"]
    assert [r["top1"] for r in val] == sequence


def test_best_survives_a_resume(tiny_overrides, tmp_path):
    """A resumed run compares with the best of the epochs before the interruption: a
    worse epoch after the resume leaves ``best.pt`` alone."""
    top1 = {1: 10.0, 2: 30.0, 3: 20.0}
    snapshots: dict[int, dict] = {}
    first = _trainer([*tiny_overrides, *STUDENT, "train.max_steps=12"])  # 2 epochs of 6 steps
    _script_evaluation(first, top1, snapshots)
    first.fit()
    assert first.epoch == 2
    run = tmp_path / "run"
    resumed = build_trainer(
        load_config(run / "config.yaml", ["train.max_steps=null"]), "best", resume=run
    )
    assert resumed.best == 30.0
    _script_evaluation(resumed, top1, snapshots)
    resumed.fit()
    assert sorted(snapshots) == [1, 2, 3]
    best = torch.load(run / "best.pt", weights_only=False)
    assert best["epoch"] == 2 and best["best"] == 30.0
    assert _same(best["student"], snapshots[2])
    assert resumed.best == 30.0
