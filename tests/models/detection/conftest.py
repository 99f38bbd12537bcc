"""Fixtures of the detector tests: a training loop that stops once the model fits its batch,
and three generated shapes images scored by COCO AP."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from kdforge.data.coco import CocoDetection
from kdforge.data.presets import detection_eval
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.eval.detection import evaluate_coco


def _overfit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    targets: list[dict],
    score: Callable[[list[dict]], float],
    above: float,
    checks: Iterable[int],
    loss_keys: Iterable[str] = (),
    num_dets: int | None = None,
) -> None:
    """Train ``model`` on one batch until ``score(detections) > above`` at one of the steps in
    ``checks`` (the last one ends the run), or fail with the scores seen and the last losses.

    Every step's losses must include ``loss_keys``; every image must give ``num_dets``
    detections when it is not None. Predictions use each target's ``img_shape``.
    """
    checks = sorted(checks)
    history = []
    for step in range(1, checks[-1] + 1):
        losses = model.loss(model(images), targets, tuple(images.shape[-2:]))
        assert set(loss_keys) <= set(losses)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step in checks:
            model.eval()
            with torch.no_grad():
                dets = model.predict(model(images), [t["img_shape"] for t in targets])
            model.train()
            assert num_dets is None or all(len(d["scores"]) == num_dets for d in dets)
            history.append((step, score(dets)))
            if history[-1][1] > above:
                return
    pytest.fail(f"(step, score) {history} never above {above}; last losses {losses}")


@pytest.fixture
def overfit() -> Callable[..., None]:
    """The training loop ``_overfit`` (a fixture, since tests cannot import conftest)."""
    return _overfit


@dataclass
class ThreeShapes:
    """Three 96x96 shapes images as one batch, their targets, and COCO AP on them."""

    data: CocoDetection
    images: Tensor  # (3, 3, 96, 96)
    targets: list[dict]

    def ap(self, dets: list[dict]) -> float:
        """COCO box AP of one prediction per image, in batch order."""
        preds = [{"image_id": t["image_id"], **d} for t, d in zip(self.targets, dets, strict=True)]
        return evaluate_coco(preds, self.data)["AP"]

    def overfit(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, checks: Iterable[int], **kw
    ) -> None:
        """Train on the three images until COCO AP > 0.9 at one of ``checks``, else fail;
        ``kw``: ``_overfit``'s ``loss_keys`` and ``num_dets``."""
        _overfit(model, optimizer, self.images, self.targets, self.ap, 0.9, checks, **kw)


@pytest.fixture
def three_shapes(tmp_path: Path) -> ThreeShapes:
    """Seed 3: six shapes of all four classes, every side >= 22 px. mmdetection's RPN gives a
    box no positive anchor below ~18 px (IoU with the 32 px anchors under min_pos_iou 0.3)."""
    root = write_shapes_dataset(
        tmp_path, num_train=3, num_val=0, image_size=(96, 96), max_objects=2, crowd_prob=0.0, seed=3
    )
    data = CocoDetection(
        root / "train", root / "annotations/instances_train.json", detection_eval((96, 96))
    )
    images = torch.stack([data[i][0] for i in range(3)])
    return ThreeShapes(data, images, [data[i][1] for i in range(3)])
