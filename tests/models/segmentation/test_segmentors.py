"""Segmentation zoo: shapes and strides, mmsegmentation key names, parameter counts, taps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.models import create_model, get_model_info, list_models
from kdforge.models.segmentation import segmentation_loss, upsample_logits
from kdforge.taps import FeatureTaps

# (parameters, len(state_dict())) at num_classes=19, num_batches_tracked included.
SIZES = {
    "pspnet_r18": (12_790_086, 172),
    "pspnet_r50": (48_975_494, 370),
    "pspnet_r101": (67_967_622, 676),
    "pspnet_mobilenetv2": (13_620_262, 346),
    "deeplabv3_r18": (13_986_374, 178),
    "deeplabv3_r50": (68_113_030, 376),
    "deeplabv3_r101": (87_105_158, 682),
    "deeplabv3_mobilenetv2": (18_602_022, 352),
}
STAGES = {  # channels of the four backbone outputs; reductions are 4, 8, 8, 8
    "r18": [64, 128, 256, 512],
    "r50": [256, 512, 1024, 2048],
    "r101": [256, 512, 1024, 2048],
    "mobilenetv2": [24, 32, 96, 320],
}
_CACHE: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = create_model(name).eval()
    return _CACHE[name]


def test_registry_lists_the_zoo() -> None:
    assert set(list_models("segmentation")) == set(SIZES)
    info = get_model_info("deeplabv3_r101")
    assert (info.input_size, info.default_num_classes) == ((3, 512, 1024), 19)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_sizes_shapes_and_feature_info(name: str) -> None:
    model = _model(name)
    assert (sum(p.numel() for p in model.parameters()), len(model.state_dict())) == SIZES[name]
    backbone = name.split("_", 1)[1]
    info = model.feature_info
    assert [d["num_chs"] for d in info] == STAGES[backbone]
    assert [d["reduction"] for d in info] == [4, 8, 8, 8]
    assert model.output_stride == 8 and model.aux_name == "auxiliary_head"
    with FeatureTaps(model, [d["module"] for d in info]) as taps, torch.no_grad():
        for size in (64, 65):  # logits are ceil(size / 8) on a side
            logits = model(torch.randn(1, 3, size, size))
            assert logits.shape == (1, 19, -(-size // 8), -(-size // 8))
            for d in info:
                assert taps.outputs[d["module"]].shape == (
                    1,
                    d["num_chs"],
                    -(-size // d["reduction"]),
                    -(-size // d["reduction"]),
                )


def test_auxiliary_head_runs_in_training_only() -> None:
    model = create_model("pspnet_r18", num_classes=5)
    images = torch.randn(2, 3, 64, 64)
    with FeatureTaps(model, [model.aux_name]) as taps:
        logits = model.train()(images)
        aux = taps.outputs[model.aux_name]
        assert aux.shape == logits.shape == (2, 5, 8, 8)
        with torch.no_grad():
            model.eval()(images)
        assert taps.calls[model.aux_name] == []


def test_pspnet_r50_key_names_follow_mmsegmentation() -> None:
    state = _model("pspnet_r50").state_dict()
    expected = {
        "backbone.stem.0.weight": (32, 3, 3, 3),
        "backbone.stem.1.running_var": (32,),
        "backbone.stem.3.weight": (32, 32, 3, 3),
        "backbone.stem.6.weight": (64, 32, 3, 3),
        "backbone.stem.7.weight": (64,),
        "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer3.0.downsample.1.running_mean": (1024,),
        "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "decode_head.psp_modules.0.1.conv.weight": (512, 2048, 1, 1),
        "decode_head.psp_modules.3.1.bn.running_var": (512,),
        "decode_head.bottleneck.conv.weight": (512, 2048 + 4 * 512, 3, 3),
        "decode_head.conv_seg.weight": (19, 512, 1, 1),
        "decode_head.conv_seg.bias": (19,),
        "auxiliary_head.convs.0.conv.weight": (256, 1024, 3, 3),
        "auxiliary_head.convs.0.bn.weight": (256,),
        "auxiliary_head.conv_seg.weight": (19, 256, 1, 1),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    counts = {p: sum(k.startswith(p + ".") for k in state) for p in ("backbone", "decode_head")}
    assert counts == {"backbone": 330, "decode_head": 32}  # aux: the other 8
    assert "backbone.conv1.weight" not in state  # the deep stem replaces the 7x7 conv


def test_deeplabv3_and_mobilenetv2_key_names() -> None:
    aspp = _model("deeplabv3_r18").state_dict()
    assert tuple(aspp["decode_head.image_pool.1.conv.weight"].shape) == (128, 512, 1, 1)
    assert tuple(aspp["decode_head.aspp_modules.0.conv.weight"].shape) == (128, 512, 1, 1)
    assert tuple(aspp["decode_head.aspp_modules.3.conv.weight"].shape) == (128, 512, 3, 3)
    assert tuple(aspp["decode_head.bottleneck.conv.weight"].shape) == (128, 5 * 128, 3, 3)
    assert tuple(aspp["auxiliary_head.convs.0.conv.weight"].shape) == (64, 256, 3, 3)
    mnv2 = _model("pspnet_mobilenetv2").state_dict()
    assert tuple(mnv2["backbone.conv1.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(mnv2["backbone.layer1.0.conv.0.conv.weight"].shape) == (32, 1, 3, 3)
    assert tuple(mnv2["backbone.layer2.0.conv.0.conv.weight"].shape) == (96, 16, 1, 1)
    assert tuple(mnv2["backbone.layer7.0.conv.2.bn.weight"].shape) == (320,)
    assert tuple(mnv2["auxiliary_head.convs.0.conv.weight"].shape) == (256, 96, 3, 3)
    assert "backbone.layer8.0.conv.0.conv.weight" not in mnv2  # no 1280-channel conv


def test_dilations_and_strides() -> None:
    r50 = _model("pspnet_r50").backbone
    assert r50.layer3[0].conv2.dilation == (1, 1) and r50.layer3[1].conv2.dilation == (2, 2)
    assert r50.layer4[0].conv2.dilation == (2, 2) and r50.layer4[2].conv2.dilation == (4, 4)
    assert r50.layer3[0].conv2.stride == r50.layer3[0].downsample[0].stride == (1, 1)
    r18 = _model("pspnet_r18").backbone  # mmseg's BasicBlock dilates conv1 only
    assert r18.layer4[1].conv1.dilation == (4, 4) and r18.layer4[1].conv2.dilation == (1, 1)
    mnv2 = _model("deeplabv3_mobilenetv2").backbone  # dilation on each stage's first block
    assert mnv2.layer4[0].conv[1].conv.dilation == (2, 2)
    assert mnv2.layer4[1].conv[1].conv.dilation == (1, 1)
    assert mnv2.layer7[0].conv[1].conv.dilation == (4, 4)
    head = _model("deeplabv3_r18").decode_head
    assert [m.conv.dilation[0] for m in head.aspp_modules] == [1, 12, 24, 36]
    assert head.dropout.p == 0.1 and _model("pspnet_r18").auxiliary_head.dropout.p == 0.1


def test_segmentation_loss_upsamples_and_ignores() -> None:
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, :4] = 255
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(upsample_logits(logits, (16, 16)), up)
    per_pixel = F.cross_entropy(up, target, ignore_index=255, reduction="none")
    assert torch.allclose(segmentation_loss(logits, target), per_pixel.sum() / target.numel())
    torch.testing.assert_close(
        segmentation_loss(logits, target, avg_non_ignore=True),
        F.cross_entropy(up, target, ignore_index=255),
    )
    with pytest.raises(ValueError, match="expected logits"):
        segmentation_loss(logits, target[0])


@pytest.mark.parametrize(
    ("name", "prefix", "classifier"),
    [
        # mmcv's open-mmlab://resnet18_v1c: bare backbone keys and an ImageNet fc
        ("pspnet_r18", "", {"fc.weight": (1000, 512), "fc.bias": (1000,)}),
        # mmpretrain's mobilenet_v2: backbone.* keys, the 1280-channel conv2 and head.fc
        (
            "deeplabv3_mobilenetv2",
            "backbone.",
            {"backbone.conv2.conv.weight": (1280, 320, 1, 1), "head.fc.weight": (1000, 1280)},
        ),
    ],
)
def test_backbone_pretrained_loads_imagenet_weights(name, prefix, classifier, tmp_path) -> None:
    source = create_model(name, num_classes=3).backbone
    for p in source.parameters():
        nn.init.normal_(p)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    state |= {k: torch.zeros(shape) for k, shape in classifier.items()}
    torch.save({"state_dict": state}, tmp_path / "imagenet.pth")

    model = create_model(name, num_classes=3, backbone_pretrained=tmp_path / "imagenet.pth")
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


def test_backbone_pretrained_of_another_backbone_names_the_keys(tmp_path) -> None:
    torch.save(create_model("pspnet_r18").backbone.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"do not fit ResNetV1c: missing \['layer1.0.conv3"):
        create_model("pspnet_r50", backbone_pretrained=tmp_path / "r18.pth")
