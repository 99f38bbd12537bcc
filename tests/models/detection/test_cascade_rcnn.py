"""Cascade (Mask) R-CNN: mmdetection keys and settings, refinement between stages, score
averaging at test time, mask targets and pasting, predictions, losses and the truncated
CanKD teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdforge.distiller import Distiller
from kdforge.errors import DataError
from kdforge.losses import CanKDLoss, DetectionLoss
from kdforge.models import create_model, list_models
from kdforge.models.detection import CascadeRoIHead
from kdforge.models.detection.mask_head import mask_loss, mask_targets, paste_masks

SMALL = {"num_classes": 3, "fpn_channels": 16, "fc_out_channels": 32}
IMAGE = 128
MASK = torch.zeros(1, IMAGE, IMAGE, dtype=torch.bool)
MASK[0, 12:30, 10:38] = True
TARGETS = [
    {"boxes": torch.tensor([[10.0, 12.0, 38.0, 30.0]]), "labels": torch.tensor([2]), "masks": MASK},
    {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.long),
        "masks": torch.zeros(0, IMAGE, IMAGE, dtype=torch.bool),
    },
]


def _small(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cascade_mask_rcnn_r18_fpn", **SMALL, mask_channels=16, **kwargs)


def _feats(channels: int = 4, size: int = IMAGE) -> list[torch.Tensor]:
    return [torch.zeros(1, channels, size // s, size // s) for s in (4, 8, 16, 32)]


def _constant(head: CascadeRoIHead, logits: list[list[float]], deltas: list[float]) -> None:
    """Make stage ``t`` output ``logits[t]`` and ``deltas`` for every RoI (zero shared
    layers: the predictors see zeros and return their biases)."""
    with torch.no_grad():
        for stage, bbox_head in enumerate(head.bbox_head):
            for fc in (*bbox_head.shared_fcs, bbox_head.fc_cls, bbox_head.fc_reg):
                fc.weight.zero_()
                fc.bias.zero_()
            bbox_head.fc_cls.bias.copy_(torch.tensor(logits[stage]))
            bbox_head.fc_reg.bias.copy_(torch.tensor(deltas))


def test_teacher_keys_and_shapes_are_mmdetections() -> None:
    assert {"cascade_mask_rcnn_r18_fpn", "cascade_mask_rcnn_x101_64x4d_fpn"} <= set(
        list_models("detection")
    )
    with torch.device("meta"):
        model = create_model("cascade_mask_rcnn_x101_64x4d_fpn")
    state = model.state_dict()
    # mmdetection's cascade_mask_rcnn_x101_64x4d_fpn_20e_coco keys outside the backbone:
    # CascadeRoIHead builds one bbox head and one mask head per stage
    expected = {
        f"neck.{kind}.{i}.conv.{p}"
        for kind in ("lateral_convs", "fpn_convs")
        for i in range(4)
        for p in ("weight", "bias")
    }
    expected |= {
        f"rpn_head.{m}.{p}" for m in ("rpn_conv", "rpn_cls", "rpn_reg") for p in ("weight", "bias")
    }
    for t in range(3):
        bbox = ("shared_fcs.0", "shared_fcs.1", "fc_cls", "fc_reg")
        expected |= {f"roi_head.bbox_head.{t}.{m}.{p}" for m in bbox for p in ("weight", "bias")}
        mask = (*(f"convs.{i}.conv" for i in range(4)), "upsample", "conv_logits")
        expected |= {f"roi_head.mask_head.{t}.{m}.{p}" for m in mask for p in ("weight", "bias")}
    assert {k for k in state if not k.startswith("backbone.")} == expected
    shapes = {
        "backbone.layer1.0.conv2.weight": (256, 4, 3, 3),  # 64 groups of 4 channels
        "backbone.layer3.22.conv3.weight": (1024, 1024, 1, 1),  # 23 blocks
        "roi_head.bbox_head.2.fc_cls.weight": (81, 1024),
        "roi_head.bbox_head.2.fc_reg.weight": (4, 1024),  # reg_class_agnostic
        "roi_head.mask_head.0.convs.0.conv.weight": (256, 256, 3, 3),
        "roi_head.mask_head.1.upsample.weight": (256, 256, 2, 2),
        "roi_head.mask_head.2.conv_logits.weight": (80, 256, 1, 1),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    # torchvision documents 83,455,272 parameters for resnext101_64x4d, its fc included
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone == 83_455_272 - (2048 * 1000 + 1000)


def test_stage_settings_follow_the_config() -> None:
    model = _small()
    head = model.roi_head
    assert head.stage_loss_weights == (1.0, 0.5, 0.25)
    stds = [c.stds for c in head.coders]
    assert stds == [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]
    assert head.mask_roi_extractor.output_size == 14 and head.bbox_roi_extractor.output_size == 7
    assert model.rpn_train_cfg.max_per_img == 2000 and model.rpn_train_cfg.nms_pre == 2000
    assert (head.num_samples, head.pos_fraction, head.test_cfg.iou_threshold) == (512, 0.25, 0.5)
    # a proposal at IoU 0.65 with the box is positive for stages 0 and 1, negative for 2
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    proposal = torch.tensor([[0.0, 0.0, 20.0, 13.0]])
    for stage, positive in enumerate((True, True, False)):
        sample = head._sample(stage, proposal, gt)
        assert sample.pos_inds.tolist() == ([0, 1] if positive else [0])  # the gt is added
        assert sample.neg_inds.tolist() == ([] if positive else [1])


def test_box_refinement_by_the_class_agnostic_deltas() -> None:
    head = CascadeRoIHead(2, in_channels=4, fc_out_channels=8, with_mask=False)
    rois = torch.tensor([[0.0, 10.0, 10.0, 30.0, 50.0]])
    deltas = torch.tensor([[1.0, -2.0, 5 * math.log(2), 0.0]])
    # stds 0.1/0.1/0.2/0.2: centre (20, 30) + (0.1 * 20, -0.2 * 40), width 20 * 2, height 40;
    # the image (H, W) = (40, 100) clips y2
    refined = head.refine(0, rois, deltas, [(40, 100)])
    assert torch.allclose(refined, torch.tensor([[0.0, 2.0, 2.0, 42.0, 40.0]]))


def test_training_refines_the_sampled_rois_less_the_ground_truths() -> None:
    head = CascadeRoIHead(2, in_channels=4, fc_out_channels=8, with_mask=False)
    _constant(head, [[0.0, 0.0, 0.0]] * 3, [1.0, 0.0, 0.0, 0.0])  # shift x by 0.1 w, 0.05 w
    seen = []
    sample = head._sample
    head._sample = lambda stage, props, gt: seen.append(props.tolist()) or sample(stage, props, gt)
    proposals = [torch.tensor([[12.0, 10.0, 32.0, 50.0], [60.0, 60.0, 80.0, 80.0]])]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 30.0, 50.0]]), "labels": torch.tensor([1])}
        | {"img_shape": (IMAGE, IMAGE)}
    ]
    losses = head.loss(_feats(), proposals, targets)
    assert seen == [
        [[12.0, 10.0, 32.0, 50.0], [60.0, 60.0, 80.0, 80.0]],
        [[14.0, 10.0, 34.0, 50.0], [62.0, 60.0, 82.0, 80.0]],  # the sampled gt is dropped
        [[15.0, 10.0, 35.0, 50.0], [63.0, 60.0, 83.0, 80.0]],
    ]
    assert set(losses) == {f"loss_s{t}_{n}" for t in range(3) for n in ("cls", "bbox")}


def test_stage_losses_are_weighted() -> None:
    def losses(weights: tuple[float, ...]) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        head = CascadeRoIHead(2, 4, 8, stage_loss_weights=weights, with_mask=False)
        props = [torch.tensor([[12.0, 10.0, 32.0, 50.0], [60.0, 60.0, 80.0, 80.0]])]
        target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 50.0]]), "labels": torch.tensor([1])}
        feats = [torch.randn(1, 4, IMAGE // s, IMAGE // s) for s in (4, 8, 16, 32)]
        return head.loss(feats, props, [target | {"img_shape": (IMAGE, IMAGE)}])

    weighted, plain = losses((1.0, 0.5, 0.25)), losses((1.0, 1.0, 1.0))
    for name, value in plain.items():
        factor = {"0": 1.0, "1": 0.5, "2": 0.25}[name[6]]
        assert value > 0 and torch.allclose(weighted[name], factor * value), name


def test_test_scores_average_the_stages_logits() -> None:
    head = CascadeRoIHead(2, in_channels=4, fc_out_channels=8, with_mask=False).eval()
    _constant(head, [[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [0.0] * 4)
    (det,) = head.predict(_feats(), [torch.tensor([[10.0, 10.0, 50.0, 60.0]])], [(IMAGE, IMAGE)])
    # softmax of the mean logits (1, 0, 0): not the mean of the softmaxes, nor the last stage
    e = math.e
    assert torch.allclose(det["scores"], torch.tensor([e / (e + 2), 1 / (e + 2)]))
    assert det["labels"].tolist() == [0, 1]
    assert torch.allclose(det["boxes"], torch.tensor([[10.0, 10.0, 50.0, 60.0]] * 2))


@pytest.mark.parametrize(
    ("stage_logits", "filled"), [((20, -20, -20), False), ((20, 20, -20), True)]
)
def test_test_masks_average_the_stages_probabilities(stage_logits, filled) -> None:
    head = CascadeRoIHead(2, 4, 8, mask_channels=4).eval()
    _constant(head, [[3.0, 0.0, 0.0]] * 3, [0.0] * 4)
    with torch.no_grad():
        for mask_head, logit in zip(head.mask_head, stage_logits, strict=True):
            mask_head.conv_logits.weight.zero_()
            mask_head.conv_logits.bias.fill_(logit)
    box = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    (det,) = head.predict(_feats(), [box], [(IMAGE, IMAGE)])
    # mean sigmoid 1/3 (below mask_thr_binary 0.5) or 2/3, pasted into the detection's box
    # (bilinear sampling at the corner pixels' centres gives less than 0.5 there)
    assert det["masks"].shape == (1, IMAGE, IMAGE)
    mask = det["masks"][0]
    assert bool(mask[11:59, 11:49].all()) == filled and mask[11:59, 11:49].unique().numel() == 1
    assert mask.sum() == mask[10:60, 10:50].sum()  # nothing outside the box


def test_mask_targets_crop_the_clipped_roi() -> None:
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[1, 20:40, 10:30] = True  # x in [10, 30), y in [20, 40)
    rois = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 20.0, 40.0, 40.0], [-20, 20, 40, 40]])
    targets = mask_targets(rois, masks, torch.tensor([1, 1, 1]))
    assert targets.shape == (3, 28, 28) and targets[0].all()
    # x 10..30 of 0..40 is columns 7..21 of 28; the third RoI is clipped to the second
    expected = torch.zeros(28, 28)
    expected[:, 7:21] = 1
    assert torch.equal(targets[1], expected) and torch.equal(targets[2], expected)
    assert mask_targets(rois, masks, torch.tensor([0, 0, 0])).sum() == 0


def test_mask_loss_reads_the_label_channel() -> None:
    logits = torch.full((1, 2, 28, 28), -20.0)
    logits[0, 1] = 20.0
    ones = torch.ones(1, 28, 28)
    assert mask_loss(logits, ones, torch.tensor([1])) < 1e-6
    assert mask_loss(logits, ones, torch.tensor([0])) == pytest.approx(20.0, rel=1e-4)


def test_paste_fills_the_box_pixels() -> None:
    probs = torch.ones(2, 28, 28)
    probs[1] = 0.4  # below mask_thr_binary
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 64.0, 50.0]])
    masks = paste_masks(probs, boxes, (50, 64))
    expected = torch.zeros(50, 64, dtype=torch.bool)
    expected[20:40, 10:30] = True
    assert masks.dtype == torch.bool and masks.shape == (2, 50, 64)
    assert torch.equal(masks[0], expected) and not masks[1].any()


def test_predict_format_with_masks() -> None:
    model = _small().eval()
    sizes = [(64, 90), (50, 70)]
    with torch.no_grad():
        dets = model.predict(model(torch.randn(2, 3, 64, 96)), sizes)
    for det, (h, w) in zip(dets, sizes, strict=True):
        n = det["boxes"].shape[0]
        assert 0 < n <= 100 and det["scores"].shape == (n,) and det["labels"].dtype == torch.int64
        assert (det["scores"] > 0.05).all() and (det["scores"].diff() <= 0).all()
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert det["masks"].shape == (n, h, w) and det["masks"].dtype == torch.bool
        assert det["mask_probs"].shape == (n, 28, 28)
        assert torch.equal(det["masks"], paste_masks(det["mask_probs"], det["boxes"], (h, w)))
    boxes_only = _small(with_mask=False).eval()
    with torch.no_grad():
        dets = boxes_only.predict(boxes_only(torch.randn(1, 3, 64, 64)), [(64, 64)])
    assert set(dets[0]) == {"boxes", "scores", "labels"}
    assert not any(k.startswith("roi_head.mask_head") for k in boxes_only.state_dict())


def test_losses_with_masks_and_without() -> None:
    model = _small().train()
    losses = model.loss(model(torch.randn(2, 3, IMAGE, IMAGE)), TARGETS, (IMAGE, IMAGE))
    stages = {f"loss_s{t}_{n}" for t in range(3) for n in ("cls", "bbox", "mask")}
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox"} | stages
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(h.conv_logits.weight.grad.abs().sum() > 0 for h in model.roi_head.mask_head)
    boxes = [{k: v for k, v in t.items() if k != "masks"} for t in TARGETS]
    with pytest.raises(DataError, match="needs instance masks.*with_mask=False"):
        model.loss(model(torch.randn(2, 3, IMAGE, IMAGE)), boxes, (IMAGE, IMAGE))
    box_only = _small(with_mask=False).train()
    assert "loss_s2_mask" not in box_only.loss(
        box_only(torch.randn(2, 3, IMAGE, IMAGE)), boxes, (IMAGE, IMAGE)
    )


def test_distils_neck_features_with_a_truncated_teacher() -> None:
    teacher, student = _small(0), create_model("faster_rcnn_r18_fpn", **SMALL)
    calls = []
    teacher.rpn_head.register_forward_hook(lambda *_: calls.append(1))
    terms = {
        "detection": DetectionLoss(),
        "cankd": CanKDLoss([f"neck.fpn_convs.{i}" for i in range(4)]),
    }
    images = torch.randn(2, 3, IMAGE, IMAGE)
    targets = [
        {"boxes": t["boxes"], "labels": t["labels"], "img_shape": (IMAGE,) * 2} for t in TARGETS
    ]
    distiller = Distiller(teacher, student, terms, example_input=images, truncate_teacher=True)
    _, losses = distiller.train()(images, targets)
    assert {"detection.cls", "detection.bbox"} <= set(losses)
    assert any(name.startswith("cankd.") for name in losses)
    assert len(calls) == 1  # the probe only: training stops the teacher after the neck
    sum(losses.values()).backward()


def test_bfloat16_autocast_keeps_losses_and_masks_in_float32() -> None:
    model = _small().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, IMAGE, IMAGE))
        losses = model.loss(out, TARGETS, (IMAGE, IMAGE))
        dets = model.predict(out, [(IMAGE, IMAGE)] * 2)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert dets[0]["boxes"].dtype == torch.float32 and dets[0]["mask_probs"].dtype == torch.float32
    sum(losses.values()).backward()
