"""Registered detectors: shapes, feature_info taps, backbone freezing, FPN variants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge import FeatureTaps
from kdforge.models import create_model, get_model_info, list_models
from kdforge.models.detection import FPN, ResNetBackbone
from kdforge.models.detection.zoo import DETECTORS

NAMES = [f"{k}_r{d}_fpn" for k in ("retinanet", "fcos", "atss", "gfl") for d in (18, 50, 101)]
SMALL = {"fpn_channels": 32, "feat_channels": 32, "stacked_convs": 2}
OUT_CHANNELS = {"retinanet": (9 * 3, 9 * 4), "fcos": (3, 4), "atss": (3, 4), "gfl": (3, 68)}


def test_registry_lists_the_detectors() -> None:
    assert list_models("detection") == sorted(NAMES)
    info = get_model_info("gfl_r50_fpn")
    assert info.input_size == (3, 800, 1333) and info.default_num_classes == 80


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_feature_taps(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **SMALL).eval()
    info = model.feature_info
    assert [i["name"] for i in info] == ["C2", "C3", "C4", "C5", "P3", "P4", "P5", "P6", "P7"]
    with FeatureTaps(model, [i["module"] for i in info]) as taps, torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))  # GN needs > 1 value per group on P7
        for entry in info:
            feat = taps.outputs[entry["module"]]
            h, w = -(-64 // entry["reduction"]), -(-96 // entry["reduction"])
            assert feat.shape == (2, entry["num_chs"], h, w), entry
    cls_chs, reg_chs = OUT_CHANNELS[name.split("_")[0]]
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        size = (-(-64 // stride), -(-96 // stride))
        assert out["cls"][level].shape == (2, cls_chs, *size)
        assert out["reg"][level].shape == (2, reg_chs, *size)


def test_detector_keys_are_mmdetection_keys() -> None:
    keys = set(create_model("atss_r18_fpn", num_classes=3, **SMALL).state_dict())
    for key in (
        "backbone.conv1.weight",
        "backbone.layer1.0.conv1.weight",
        "backbone.layer4.1.bn2.running_var",
        "neck.lateral_convs.0.conv.weight",
        "neck.fpn_convs.4.conv.bias",
        "bbox_head.cls_convs.1.gn.weight",
        "bbox_head.atss_centerness.weight",
        "bbox_head.scales.4.scale",
    ):
        assert key in keys, key
    assert not any(k.startswith("backbone.fc") for k in keys)


def test_backbone_freezes_stem_and_stage1_and_keeps_bn_in_eval() -> None:
    backbone = ResNetBackbone(18)
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    assert all(n.startswith(("conv1", "bn1", "layer1.")) for n in frozen)
    assert len(frozen) == len(
        [n for n, _ in backbone.named_parameters() if n.startswith(("conv1", "bn1", "layer1."))]
    )
    backbone.train()
    assert backbone.training and backbone.layer2.training and not backbone.layer1.training
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert (
        backbone.layer2[0].conv1.weight.requires_grad
        and backbone.layer2[0].bn1.weight.requires_grad
    )
    free = ResNetBackbone(18, frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in free.parameters()) and free.bn1.training


def test_backbone_styles_and_frozen_bn_affine() -> None:
    caffe = ResNetBackbone(50, style="caffe", norm_requires_grad=False)
    pytorch = ResNetBackbone(50)
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert pytorch.layer2[0].conv1.stride == (1, 1) and pytorch.layer2[0].conv2.stride == (2, 2)
    assert not caffe.layer3[0].bn1.weight.requires_grad
    fcos = create_model("fcos_r50_fpn", num_classes=3, **SMALL)
    assert fcos.backbone.style == "caffe" and not fcos.backbone.layer4[0].bn3.weight.requires_grad
    assert (
        create_model("fcos_r50_fpn", num_classes=3, style="pytorch", **SMALL).backbone.style
        == "pytorch"
    )


def test_backbone_loads_torchvision_imagenet_weights() -> None:
    imagenet = create_model("resnet18")
    backbone = ResNetBackbone(18).load_torchvision(imagenet.state_dict())
    torch.testing.assert_close(backbone.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)
    expected = {k for k in imagenet.state_dict() if not k.startswith("fc.")}
    assert set(backbone.state_dict()) == expected


def test_fpn_extra_conv_sources() -> None:
    c = [
        torch.randn(1, ch, 64 // s, 64 // s)
        for ch, s in zip((8, 16, 32, 64), (4, 8, 16, 32), strict=True)
    ]
    on_input = FPN((8, 16, 32, 64), 16, add_extra_convs="on_input")
    on_output = FPN((8, 16, 32, 64), 16, add_extra_convs="on_output", relu_before_extra_convs=True)
    assert (
        on_input.fpn_convs[3].conv.in_channels == 64
        and on_output.fpn_convs[3].conv.in_channels == 16
    )
    assert len(on_input.lateral_convs) == 3 and len(on_input.fpn_convs) == 5
    outs = on_output(c)
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    p7 = on_output.fpn_convs[4](torch.relu(outs[3]))
    torch.testing.assert_close(outs[4], p7)
    p6 = on_input.fpn_convs[3](c[3])
    torch.testing.assert_close(on_input(c)[3], p6)
    for kind, (_, _, _, extra, relu) in DETECTORS.items():
        neck = create_model(f"{kind}_r18_fpn", num_classes=3, **SMALL).neck
        assert (neck.add_extra_convs, neck.relu_before_extra_convs) == (extra, relu)


def test_detector_loss_and_predict_api() -> None:
    model = create_model("gfl_r18_fpn", num_classes=3, **SMALL)
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([2])},
        {
            "boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]),
            "labels": torch.tensor([0]),
            "ignore_boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
        },
    ]
    losses = model.loss(model(images), targets, [(64, 64), (64, 48)])
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
    model.eval()
    with torch.no_grad():
        dets = model.predict(model(images), [(64, 64), (64, 48)])
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}
    assert model.head is model.bbox_head
