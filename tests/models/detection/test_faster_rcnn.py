"""Faster R-CNN as a kdforge model: registry, mmdetection keys and size, feature taps,
losses and predictions on batches of mixed sizes, empty images, AMP, and distillation."""

from __future__ import annotations

import torch
from torch import nn

from kdforge import FeatureTaps
from kdforge.distiller import Distiller
from kdforge.losses import CanKDLoss, DetectionLoss
from kdforge.models import create_model, get_model_info, list_models

SMALL = {"num_classes": 3, "fpn_channels": 16, "fc_out_channels": 32}
TARGETS = [
    {"boxes": torch.tensor([[8.0, 10.0, 40.0, 34.0]]), "labels": torch.tensor([2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]


def _small(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("faster_rcnn_r18_fpn", **SMALL)


def test_registered_with_coco_defaults() -> None:
    names = {f"faster_rcnn_r{d}_fpn" for d in (18, 50, 101)}
    assert names <= set(list_models("detection"))
    info = get_model_info("faster_rcnn_r50_fpn")
    assert info.default_num_classes == 80 and info.input_size == (3, 800, 1333)


def test_keys_and_size_are_mmdetections() -> None:
    model = create_model("faster_rcnn_r50_fpn")
    state = model.state_dict()
    # mmdetection's faster-rcnn_r50_fpn_1x_coco checkpoint keys outside the backbone
    expected = {
        f"neck.{kind}.{i}.conv.{p}"
        for kind in ("lateral_convs", "fpn_convs")
        for i in range(4)
        for p in ("weight", "bias")
    }
    expected |= {
        f"rpn_head.{m}.{p}" for m in ("rpn_conv", "rpn_cls", "rpn_reg") for p in ("weight", "bias")
    }
    expected |= {
        f"roi_head.bbox_head.{m}.{p}"
        for m in ("shared_fcs.0", "shared_fcs.1", "fc_cls", "fc_reg")
        for p in ("weight", "bias")
    }
    assert {k for k in state if not k.startswith("backbone.")} == expected
    assert "backbone.layer4.2.bn3.running_mean" in state and "backbone.fc.weight" not in state
    shapes = {
        "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1),
        "neck.lateral_convs.3.conv.weight": (256, 2048, 1, 1),
        "rpn_head.rpn_conv.weight": (256, 256, 3, 3),
        "rpn_head.rpn_cls.weight": (3, 256, 1, 1),
        "rpn_head.rpn_reg.weight": (12, 256, 1, 1),
        "roi_head.bbox_head.shared_fcs.0.weight": (1024, 256 * 7 * 7),
        "roi_head.bbox_head.fc_cls.weight": (81, 1024),
        "roi_head.bbox_head.fc_reg.weight": (320, 1024),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    # torchvision documents 41,755,286 parameters for fasterrcnn_resnet50_fpn, the same
    # network with 91 classes (fc_cls 91 outputs, ours 81; fc_reg 364, ours 320) and frozen
    # BatchNorm (no affine parameters)
    bn_affine = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    )
    tv_extra_classes = (1024 + 1) * (10 + 44)
    assert sum(p.numel() for p in model.parameters()) == 41_755_286 - tv_extra_classes + bn_affine


def test_feature_info_taps_and_max_pooled_p6() -> None:
    model = _small().eval()
    info = model.feature_info
    assert [i["name"] for i in info] == ["C2", "C3", "C4", "C5", "P2", "P3", "P4", "P5", "P6"]
    with FeatureTaps(model, [i["module"] for i in info]) as taps, torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
        for entry in info:
            h, w = -(-64 // entry["reduction"]), -(-96 // entry["reduction"])
            assert taps.outputs[entry["module"]].shape == (2, entry["num_chs"], h, w), entry
    p5, p6 = out["feats"][3], out["feats"][4]
    assert torch.equal(p6, p5[..., ::2, ::2])
    for level, (cls, reg) in enumerate(zip(out["rpn_cls"], out["rpn_reg"], strict=True)):
        size = tuple(out["feats"][level].shape[-2:])
        assert cls.shape == (2, 3, *size) and reg.shape == (2, 12, *size)


def test_losses_on_mixed_sizes_and_an_empty_image() -> None:
    model = _small().train()
    out = model(torch.randn(2, 3, 64, 96))
    targets = [TARGETS[0] | {"img_shape": (64, 90)}, TARGETS[1] | {"img_shape": (40, 96)}]
    losses = model.loss(out, targets, [(64, 96), (64, 96)])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_head.bbox_head.fc_reg.weight.grad.abs().sum() > 0
    assert model.backbone.layer1[0].conv1.weight.grad is None  # frozen stage
    empty = model.loss(model(torch.randn(2, 3, 64, 64)), [TARGETS[1]] * 2, (64, 64))
    assert empty["loss_rpn_bbox"].item() == 0 and empty["loss_bbox"].item() == 0
    assert empty["loss_rpn_cls"] > 0 and empty["loss_cls"] > 0


def test_no_gradient_flows_through_the_proposals() -> None:
    model = _small().train()
    losses = model.loss(model(torch.randn(2, 3, 64, 64)), TARGETS, (64, 64))
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    assert all(p.grad is None for p in model.rpn_head.parameters())  # only via proposals
    assert model.neck.fpn_convs[0].conv.weight.grad is not None  # via RoIAlign


def test_sampling_follows_the_seed() -> None:
    model = _small().train()
    for layer in (model.rpn_head.rpn_cls, model.roi_head.bbox_head.fc_cls):
        nn.init.normal_(layer.weight)  # scores that differ between samples
    model.roi_head.num_samples = 16  # fewer than the proposals: the R-CNN stage draws too
    images = torch.randn(2, 3, 64, 64)

    def losses(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model.loss(model(images), TARGETS, (64, 64))

    assert losses(3) == losses(3)
    different = [k for k, v in losses(3).items() if v != losses(4)[k]]
    # every positive anchor is taken (< 128): only the negatives' draw differs
    assert {"loss_rpn_cls", "loss_cls"} <= set(different) and "loss_rpn_bbox" not in different


def test_predict_format_clipped_to_each_image() -> None:
    model = _small().eval()
    with torch.no_grad():
        dets = model.predict(model(torch.randn(2, 3, 64, 96)), [(64, 90), (50, 70)])
    assert len(dets) == 2
    for det, (h, w) in zip(dets, [(64, 90), (50, 70)], strict=True):
        n = det["boxes"].shape[0]
        assert 0 < n <= 100 and det["boxes"].shape == (n, 4)
        assert det["scores"].shape == (n,) and det["labels"].dtype == torch.int64
        assert (det["scores"] > 0.05).all() and (det["scores"].diff() <= 0).all()
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert (det["boxes"] >= 0).all()


def test_bfloat16_autocast_keeps_losses_in_float32() -> None:
    model = _small().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
        losses = model.loss(out, TARGETS, (64, 64))
        dets = model.predict(out, [(64, 64)] * 2)
    assert out["rpn_cls"][0].dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert dets[0]["boxes"].dtype == torch.float32
    sum(losses.values()).backward()


def test_distils_neck_features_with_a_truncated_teacher() -> None:
    teacher, student = _small(0), _small(1)
    calls = []
    teacher.rpn_head.register_forward_hook(lambda *_: calls.append(1))
    terms = {
        "detection": DetectionLoss(),
        "cankd": CanKDLoss([f"neck.fpn_convs.{i}" for i in range(4)]),
    }
    images = torch.randn(2, 3, 128, 128)
    targets = [t | {"img_shape": (128, 128)} for t in TARGETS]
    distiller = Distiller(teacher, student, terms, example_input=images, truncate_teacher=True)
    _, losses = distiller.train()(images, targets)
    names = {"rpn_cls", "rpn_bbox", "cls", "bbox"}
    assert {f"detection.{name}" for name in names} <= set(losses)
    assert len(calls) == 1  # the probe only: training stops the teacher after the neck
    sum(losses.values()).backward()
