"""Confusion matrices: the most confused pairs, labelled-pixel counts, and the command on
generated CIFAR, shapes detection and shapes segmentation data."""

from __future__ import annotations

import csv

import torch
from torch import nn

from kdforge.analysis.confusion import (
    draw_confusion,
    model_confusion,
    most_confused,
    run_confusion_matrix,
)
from kdforge.cli import main
from kdforge.config import load_config
from kdforge.engine.build import build_data
from kdforge.engine.distributed import DistInfo
from kdforge.engine.tasks import get_task


def test_most_confused_pairs_share_of_the_true_class():
    counts = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert most_confused(counts, ["a", "b", "c"], 5) == [
        ("a", "b", 1, 0.5),
        ("c", "a", 1, 1 / 3),
    ]


class AlwaysClass(nn.Module):
    """A segmentor that predicts class ``k`` at every pixel, at 1/8 resolution."""

    def __init__(self, k: int, num_classes: int) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes

    def forward(self, images):
        n, _, h, w = images.shape
        logits = torch.zeros(n, self.num_classes, h // 8, w // 8)
        logits[:, self.k] = 1.0
        return logits


def test_segmentation_counts_labelled_pixels_only(segmentation_overrides):
    cfg = load_config(None, segmentation_overrides)
    task = get_task("segmentation")
    _, loader, _ = build_data(cfg.data, DistInfo(), 0, task)
    matrix = model_confusion(AlwaysClass(2, 5), loader, task, torch.device("cpu"))
    masks = torch.cat([m for _, m in loader]).flatten()
    labelled = masks[masks != 255]
    assert torch.equal(matrix[:, 2], torch.bincount(labelled, minlength=5))
    assert matrix.sum() == labelled.numel() and matrix[:, [0, 1, 3, 4]].sum() == 0


def test_classification_command_writes_png_and_csv(tiny_overrides, tmp_path, capsys, check_png):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8}\n")
    out = tmp_path / "cm"
    main(["confusion-matrix", str(recipe), "--out", str(out), "--set", *tiny_overrides])
    printed = capsys.readouterr().out
    assert "wrote" in printed and "confusion_matrix.png" in printed
    check_png(out / "confusion_matrix.png", 300, 300)
    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert rows[0][1:4] == ["airplane", "automobile", "bird"] and len(rows) == 11
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 24  # every validation image


def test_detection_and_segmentation_commands(
    detection_overrides, segmentation_overrides, tmp_path, check_png
):
    png, table, _ = run_confusion_matrix(
        None, None, tmp_path / "det", score_thr=0.0, overrides=detection_overrides
    )
    check_png(png, 300, 300)
    rows = list(csv.reader(table.open()))
    assert rows[0][-1] == "background" and len(rows) == 6  # 4 shapes + background
    png, table, _ = run_confusion_matrix(
        None, None, tmp_path / "seg", overrides=segmentation_overrides
    )
    check_png(png, 300, 300)
    assert len(list(csv.reader(table.open()))) == 6  # header + 5 classes


def test_many_classes_list_the_most_confused_pairs(tmp_path, check_png):
    matrix = torch.eye(30, dtype=torch.int64) * 10
    matrix[3, 7] = 9
    names = [f"class{i}" for i in range(30)]
    assert most_confused(matrix, names, 3) == [("class3", "class7", 9, 9 / 19)]
    check_png(draw_confusion(matrix, names, tmp_path / "cm.png", "30 classes", 3), 1400, 1000)
