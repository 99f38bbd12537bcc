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
RESNEXT = ["retinanet_x101_32x4d_fpn", "retinanet_x101_64x4d_fpn", "fcos_x101_64x4d_fpn"]
SMALL = {"fpn_channels": 32, "feat_channels": 32, "stacked_convs": 2}
OUT_CHANNELS = {"retinanet": (9 * 3, 9 * 4), "fcos": (3, 4), "atss": (3, 4), "gfl": (3, 68)}


def test_registry_lists_the_detectors() -> None:
    two_stage = [f"faster_rcnn_r{d}_fpn" for d in (18, 50, 101)]  # test_faster_rcnn.py
    two_stage += [
        "cascade_mask_rcnn_r18_fpn",
        "cascade_mask_rcnn_x101_64x4d_fpn",
    ]  # test_cascade_rcnn.py
    two_stage += [f"dino_4scale_r{d}" for d in (18, 50, 101)]  # test_deformable_transformer.py
    two_stage += ["retinanet_swin_t_fpn"]  # test_swin.py
    two_stage += [f"grounding_dino_r{d}" for d in (18, 50, 101)]  # test_grounding_dino.py
    reppoints = [f"reppoints_moment_r{d}_fpn_gn" for d in (18, 50, 101)]  # test_reppoints.py
    reppoints.append("reppoints_moment_x101_32x4d_dcn_fpn_gn")
    assert list_models("detection") == sorted(NAMES + RESNEXT + two_stage + reppoints)
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
        name = "reppoints_moment_r18_fpn_gn" if kind == "reppoints" else f"{kind}_r18_fpn"
        neck = create_model(name, num_classes=3, **SMALL).neck
        assert (neck.add_extra_convs, neck.relu_before_extra_convs) == (extra, relu)
    # CrossKD's RetinaNet students read P6 from P5 (add_extra_convs="on_output")
    model = create_model("retinanet_r18_fpn", num_classes=3, add_extra_convs="on_output", **SMALL)
    assert model.neck.add_extra_convs == "on_output"
    assert model.neck.fpn_convs[3].conv.in_channels == SMALL["fpn_channels"]


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


def _resnext_count(depths: tuple[int, ...], groups: int, base_width: int) -> int:
    """Parameters of a ResNeXt without ``fc``, summed layer by layer (BN: weight + bias)."""
    total, in_chs = 3 * 64 * 7 * 7 + 2 * 64, 64
    for stage, blocks in enumerate(depths):
        planes = 64 * 2**stage
        inner, out = planes * base_width // 64 * groups, 4 * planes
        for j in range(blocks):
            total += in_chs * inner + inner * (inner // groups) * 9 + inner * out  # convs
            total += 2 * (inner + inner + out)  # bn1, bn2, bn3
            if j == 0:
                total += in_chs * out + 2 * out  # downsample conv + BN
            in_chs = out
    return total


FC = 2048 * 1000 + 1000  # the ImageNet classifier that the detection backbone drops


@pytest.mark.parametrize(
    "depth, groups, base_width, torchvision",
    [
        (50, 32, 4, 25_028_904),  # torchvision resnext50_32x4d
        (101, 32, 8, 88_791_336),  # torchvision resnext101_32x8d
        (101, 64, 4, 83_455_272),  # torchvision resnext101_64x4d (= mmdetection's layout)
        (101, 32, 4, 44_177_704),  # timm resnext101_32x4d: 44.18M (formula only)
    ],
)
def test_resnext_parameter_counts(depth, groups, base_width, torchvision) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        backbone = ResNetBackbone(depth, groups=groups, base_width=base_width)
    count = sum(p.numel() for p in backbone.parameters())
    depths = (3, 4, 6, 3) if depth == 50 else (3, 4, 23, 3)
    assert count == _resnext_count(depths, groups, base_width)
    assert count + FC == torchvision
    first = backbone.layer1[0].conv2  # mmdetection: floor(64 * base_width / 64) * groups
    assert (first.out_channels, first.groups) == (base_width * groups, groups)


@pytest.mark.parametrize("name", RESNEXT)
def test_resnext_detectors_follow_mmdetection_configs(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name)
    backbone, kind = model.backbone, name.split("_")[0]
    groups = int(name.split("_")[2].split("x")[0])
    assert (backbone.groups, backbone.base_width, backbone.style) == (groups, 4, "pytorch")
    assert backbone.layer3[0].bn1.weight.requires_grad  # BN affine trains, FCOS included
    assert [i["num_chs"] for i in backbone.feature_info] == [256, 512, 1024, 2048]
    assert backbone.arch == f"ResNeXt-101 {groups}x4d"
    assert model.neck.add_extra_convs == DETECTORS[kind][3]
    assert type(model.bbox_head) is DETECTORS[kind][0]


def test_resnext_backbone_forward_and_freezing() -> None:
    torch.manual_seed(0)
    backbone = ResNetBackbone(50, groups=8, base_width=4).train()
    assert backbone.layer2[0].conv2.groups == 8 and backbone.layer2[0].conv2.out_channels == 64
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (256, 16, 16),
        (512, 8, 8),
        (1024, 4, 4),
        (2048, 2, 2),
    ]
    with pytest.raises(ValueError, match="ResNeXt"):
        ResNetBackbone(18, groups=32)
