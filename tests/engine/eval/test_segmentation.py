"""Segmentation metrics against hand-computed values; whole vs sliding inference; DDP sums."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.engine.eval.segmentation import (
    confusion_matrix,
    evaluate_segmentation,
    format_iou_table,
    segmentation_metrics,
    slide_inference,
    whole_inference,
)
from kdforge.models import create_model


class Oracle(nn.Module):
    """Predicts the class written in channel 0 of the image."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels = images[:, 0].long()  # (N, H, W)
        return 10.0 * F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()


def test_confusion_and_metrics_by_hand() -> None:
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 255, 255]])
    pred = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2]])
    conf = confusion_matrix(pred, target, num_classes=3)
    assert conf.tolist() == [[3, 1, 0], [0, 2, 0], [0, 0, 0]]  # rows: truth, cols: prediction
    m = segmentation_metrics(conf)
    # class 0: TP 3, FN 1, FP 0 -> IoU 3/4; class 1: TP 2, FP 1 -> 2/3; class 2: absent (NaN)
    assert m["IoU"][:2].tolist() == pytest.approx([75.0, 200 / 3]) and math.isnan(m["IoU"][2])
    assert m["Acc"][:2].tolist() == pytest.approx([75.0, 100.0]) and math.isnan(m["Acc"][2])
    assert m["mIoU"] == pytest.approx((75.0 + 200 / 3) / 2)
    assert m["mAcc"] == pytest.approx(87.5) and m["aAcc"] == pytest.approx(500 / 6)
    # predicted but never labelled: IoU 0 counts in the mean, Acc stays NaN
    m = segmentation_metrics(torch.tensor([[1, 1], [0, 0]]))
    assert m["IoU"].tolist()[0] == pytest.approx(50.0) and m["IoU"].tolist()[1] == 0.0
    assert m["mIoU"] == pytest.approx(25.0) and m["mAcc"] == pytest.approx(50.0)
    table = format_iou_table(segmentation_metrics(conf), ["road", "car", "sky"])
    assert "| road  |  75.00 |  75.00 |" in table and "|    nan |" in table
    assert table.splitlines()[-1] == "aAcc 83.33  mIoU 70.83  mAcc 87.50"


def test_labels_out_of_range_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"label values \[26\] are outside 0..18"):
        confusion_matrix(torch.zeros(3), torch.tensor([0, 26, 255]), num_classes=19)


def test_slide_equals_whole_when_the_window_covers_the_image() -> None:
    torch.manual_seed(0)
    model = create_model("pspnet_r18", num_classes=4).eval()
    image = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        whole = whole_inference(model, image)
        assert whole.shape == (2, 4, 40, 56)
        assert torch.equal(slide_inference(model, image, 4, crop=(64, 64), stride=(32, 32)), whole)


def test_slide_averages_overlapping_windows() -> None:
    torch.manual_seed(0)
    pointwise = nn.Conv2d(3, 5, 1)  # a per-pixel model: every window agrees with the whole
    image = torch.randn(1, 3, 30, 41)
    with torch.no_grad():
        slid = slide_inference(pointwise, image, 5, crop=(16, 16), stride=(5, 7))
        torch.testing.assert_close(slid, pointwise(image))
        ones = slide_inference(
            lambda x: torch.ones(1, 2, *x.shape[-2:]), image, 2, (16, 16), (5, 7)
        )
    assert torch.equal(ones, torch.ones(1, 2, 30, 41))  # sums divided by the window counts


def test_evaluate_segmentation_end_to_end() -> None:
    labels = torch.randint(0, 3, (2, 4, 4)).repeat_interleave(4, 1).repeat_interleave(4, 2)
    images = labels[:, None].float().repeat(1, 3, 1, 1)  # (2, 3, 16, 16)
    masks = labels.clone()
    masks[:, :2] = 255  # ignored rows
    loader = [(images, masks), (images, masks)]
    device = torch.device("cpu")
    for mode in ("whole", "slide"):
        m = evaluate_segmentation(
            Oracle(3), loader, device, 3, mode=mode, crop=(8, 8), stride=(8, 8)
        )
        assert (m["mIoU"], m["aAcc"], m["count"]) == (100.0, 100.0, 2 * 2 * 14 * 16)
    wrong = [(images, (labels + 1) % 3)]
    m = evaluate_segmentation(Oracle(3), wrong, device, 3, class_names=["a", "b", "c"])
    assert (m["mIoU"], m["aAcc"]) == (0.0, 0.0) and "| a     |" in m["table"]
    half = evaluate_segmentation(Oracle(3), [*loader, *wrong], device, 3, max_batches=1)
    assert half["count"] == 2 * 14 * 16
    with pytest.raises(ValueError, match="mode must be"):
        evaluate_segmentation(Oracle(3), loader, device, 3, mode="tiles")


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.nn.functional as F
    from kdforge.engine.eval.segmentation import evaluate_segmentation

    class Model(torch.nn.Module):  # predicts the class in channel 0
        def forward(self, images):
            return F.one_hot(images[:, 0].long(), 3).permute(0, 3, 1, 2).float()

    def shard(rank):  # rank 0: all right; rank 1: all wrong
        labels = torch.full((1, 4, 4), rank, dtype=torch.long)
        return [(torch.zeros(1, 3, 4, 4), labels)]

    def worker(rank, path):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
        dist.init_process_group("gloo", rank=rank, world_size=2)
        m = evaluate_segmentation(Model(), shard(rank), torch.device("cpu"), 3)
        if rank == 0:
            json.dump({k: v for k, v in m.items() if k != "table"}, open(path, "w"))
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(worker, args=(sys.argv[1],), nprocs=2)
    """
)


def test_confusion_matrices_are_summed_over_processes(tmp_path) -> None:
    script, out = tmp_path / "ddp_eval.py", tmp_path / "metrics.json"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    subprocess.run([sys.executable, str(script), str(out), port], check=True, timeout=120)
    metrics = json.loads(out.read_text())
    # 16 pixels of class 0 right, 16 of class 1 predicted as 0: IoU 50 and 0, aAcc 50
    assert metrics == {"mIoU": 25.0, "mAcc": 50.0, "aAcc": 50.0, "count": 32}
