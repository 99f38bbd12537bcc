"""DINOHead: mmdetection names and init, losses by hand (matching, denoising), top-k decoding."""

from __future__ import annotations

import math

import pytest
import torch

import kdforge.models.detection.dino_head as dino_head_module
from kdforge.models.detection.boxes import inverse_sigmoid
from kdforge.models.detection.dino_head import DINOHead

BIAS = -math.log(99.0)  # prior 0.01
P = 0.01  # sigmoid(BIAS): every logit of a zero hidden state


def _focal_pos(p: float = P) -> float:
    return -math.log(p) * 0.25 * (1 - p) ** 2


def _focal_neg(p: float = P) -> float:
    return -math.log(1 - p) * 0.75 * p**2


def test_names_shapes_and_init() -> None:
    head = DINOHead(num_classes=80)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert len(shapes) == 7 * 2 + 7 * 6
    assert shapes["cls_branches.6.weight"] == (80, 256) and shapes["cls_branches.6.bias"] == (80,)
    for i in (0, 2):
        assert shapes[f"reg_branches.0.{i}.weight"] == (256, 256)
    assert shapes["reg_branches.6.4.weight"] == (4, 256) and "reg_branches.0.5.bias" not in shapes
    torch.testing.assert_close(head.cls_branches[3].bias, torch.full((80,), BIAS))
    assert not head.reg_branches[0][4].weight.any() and not head.reg_branches[6][4].bias.any()
    assert head.reg_branches[0][0].weight.std() > 0  # hidden layers keep torch's default init
    assert head.cls_branches[0].weight.data_ptr() != head.cls_branches[1].weight.data_ptr()


def _one_image(ref_rows, num_layers: int = 1):
    """Zero hidden states (all logits = BIAS) and the given references for one image."""
    refs = torch.tensor(ref_rows)[None].expand(num_layers + 1, 1, -1, -1).contiguous()
    return torch.zeros(num_layers, 1, refs.shape[2], 8), refs


def test_matching_losses_by_hand() -> None:
    head = DINOHead(num_classes=2, embed_dims=8, num_pred_layer=1)
    # 100 x 100 image, box (0, 0, 50, 50) class 1; query 0 predicts (5, 0, 55, 50)
    hidden, refs = _one_image([[0.3, 0.25, 0.5, 0.5], [0.8, 0.8, 0.2, 0.2]])
    target = {"boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0]]), "labels": torch.tensor([1])}
    losses = head.loss(hidden, refs, None, None, [target], None, (100, 100))
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_iou"}
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(
        losses["loss_cls"].item(), (_focal_pos() + 3 * _focal_neg()) / (1 + eps)
    )
    torch.testing.assert_close(losses["loss_bbox"].item(), 5.0 * 0.05, rtol=1e-4, atol=1e-6)
    # overlap 45 x 50, union 2750 = enclosing box: GIoU = IoU = 2250 / 2750
    torch.testing.assert_close(
        losses["loss_iou"].item(), 2.0 * (1 - 2250 / 2750), rtol=1e-4, atol=1e-6
    )


def test_boxes_are_normalised_by_img_shape_not_the_padded_size() -> None:
    head = DINOHead(num_classes=2, embed_dims=8, num_pred_layer=1)
    hidden, refs = _one_image([[0.3, 0.25, 0.5, 0.5], [0.8, 0.8, 0.2, 0.2]])
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0]]),
        "labels": torch.tensor([1]),
        "img_shape": (100, 100),
    }
    losses = head.loss(hidden, refs, None, None, [target], None, (128, 160))  # padded batch
    torch.testing.assert_close(losses["loss_bbox"].item(), 5.0 * 0.05, rtol=1e-4, atol=1e-6)


def test_denoising_targets_layout_by_hand() -> None:
    """Two groups; image A has 1 box (m = 2: padded), image B 2 boxes. Positives sit at
    ``g * 4 + j``; with the references on the boxes there, the box losses vanish."""
    head = DINOHead(num_classes=3, embed_dims=8, num_pred_layer=1)
    box_a = [0.5, 0.5, 0.4, 0.4]
    box_b = [[0.25, 0.25, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]
    far = [0.1, 0.9, 0.05, 0.05]
    dn_a = [box_a, far, far, far, box_a, far, far, far]
    dn_b = [box_b[0], box_b[1], far, far, box_b[0], box_b[1], far, far]
    matching = [[0.5, 0.5, 0.1, 0.1]] * 3
    refs = torch.tensor([dn_a + matching, dn_b + matching])[None].expand(2, -1, -1, -1)
    hidden = torch.zeros(1, 2, 11, 8)

    def px(cxcywh, h, w):
        cx, cy, bw, bh = cxcywh
        return [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]

    targets = [
        {"boxes": torch.tensor([px(box_a, 40, 80)]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([px(b, 60, 50) for b in box_b]), "labels": torch.tensor([0, 1])},
    ]
    meta = {"num_denoising_queries": 8, "num_denoising_groups": 2}
    losses = head.loss(hidden, refs, None, None, targets, meta, [(40, 80), (60, 50)])
    assert losses["dn_loss_bbox"].item() < 1e-5 and losses["dn_loss_iou"].item() < 1e-5
    # 6 positives among 2 x 8 x 3 logits, all at p = 0.01; normaliser 6
    expected = (6 * _focal_pos() + (48 - 6) * _focal_neg()) / 6
    torch.testing.assert_close(losses["dn_loss_cls"].item(), expected, rtol=1e-5, atol=1e-7)


def test_loss_names_every_layer_encoder_and_denoising() -> None:
    torch.manual_seed(0)
    head = DINOHead(num_classes=4, embed_dims=8, num_pred_layer=4)
    hidden = torch.randn(3, 2, 6 + 5, 8, requires_grad=True)
    refs = torch.rand(4, 2, 11, 4) * 0.5 + 0.25
    targets = [
        {"boxes": torch.tensor([[2.0, 3.0, 20.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    enc_cls, enc_box = torch.randn(2, 5, 4), torch.rand(2, 5, 4) * 0.5 + 0.25
    meta = {"num_denoising_queries": 6, "num_denoising_groups": 3}
    losses = head.loss(hidden, refs, enc_cls, enc_box, targets, meta, (32, 48))
    parts = ("cls", "bbox", "iou")
    expected = {f"{p}loss_{k}" for p in ("", "d0.", "d1.", "enc_") for k in parts}
    expected |= {f"{p}dn_loss_{k}" for p in ("", "d0.", "d1.") for k in parts}
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert hidden.grad.abs().sum() > 0 and head.reg_branches[2][4].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sync", [True, False])
def test_normalisers_averaged_over_processes(monkeypatch, sync: bool) -> None:
    head = DINOHead(num_classes=2, embed_dims=8, num_pred_layer=1, sync_cls_avg_factor=sync)
    hidden, refs = _one_image([[0.3, 0.25, 0.5, 0.5], [0.8, 0.8, 0.2, 0.2]])
    target = {"boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0]]), "labels": torch.tensor([1])}
    base = head.loss(hidden, refs, None, None, [target], None, (100, 100))
    monkeypatch.setattr(dino_head_module, "reduce_mean", lambda v: v * 4)  # other ranks' mean
    scaled = head.loss(hidden, refs, None, None, [target], None, (100, 100))
    torch.testing.assert_close(scaled["loss_bbox"], base["loss_bbox"] / 4)
    torch.testing.assert_close(scaled["loss_iou"], base["loss_iou"] / 4)
    torch.testing.assert_close(scaled["loss_cls"], base["loss_cls"] / (4 if sync else 1))


def test_predict_top_k_over_queries_and_classes() -> None:
    head = DINOHead(num_classes=3, embed_dims=4, num_pred_layer=2, max_per_img=4)
    with torch.no_grad():
        last = head.cls_branches[1]
        last.weight.zero_()
        last.bias.zero_()
        last.weight[:, 0] = torch.tensor([3.0, -1.0, 0.0])  # logits of query 0
        last.weight[:, 1] = torch.tensor([1.0, 2.0, -3.0])  # logits of query 1
    hidden = torch.zeros(2, 1, 2, 4)
    hidden[-1, 0, 0, 0] = 1.0
    hidden[-1, 0, 1, 1] = 1.0
    refs = torch.rand(3, 1, 2, 4)
    refs[1, 0] = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.95, 0.5, 0.2, 0.2]])  # last layer's input
    (result,) = head.predict(hidden, refs, [(50, 100)])
    torch.testing.assert_close(result["scores"], torch.tensor([3.0, 2.0, 1.0, 0.0]).sigmoid())
    assert result["labels"].tolist() == [0, 1, 0, 2]
    q0, q1 = [40.0, 15.0, 60.0, 35.0], [85.0, 20.0, 100.0, 30.0]  # q1 clipped at x = 100
    torch.testing.assert_close(result["boxes"], torch.tensor([q0, q1, q1, q0]), atol=1e-4, rtol=0)


def test_forward_adds_offsets_to_each_layers_reference() -> None:
    torch.manual_seed(0)
    head = DINOHead(num_classes=2, embed_dims=8, num_pred_layer=3)
    for branch in head.reg_branches:
        torch.nn.init.normal_(branch[-1].weight)
    hidden, refs = torch.randn(2, 1, 3, 8), torch.rand(3, 1, 3, 4)
    cls, boxes = head(hidden, refs)
    for layer in range(2):
        offset = head.reg_branches[layer](hidden[layer])
        torch.testing.assert_close(boxes[layer], (offset + inverse_sigmoid(refs[layer])).sigmoid())
        torch.testing.assert_close(cls[layer], head.cls_branches[layer](hidden[layer]))
