"""``kdforge convert mmdet`` on RepPoints checkpoints written with mmdetection's key names
(``ResNet``/``ResNeXt`` with ``DeformConv2dPack`` conv2, ``FPN`` with GN ``ConvModule``s,
``RepPointsHead``), not from our models, so a renamed parameter on our side fails here."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.errors import CheckpointError
from kdforge.models import create_model
from kdforge.models.detection import convert_mmdet

_BN = ("weight", "bias", "running_mean", "running_var")
R50 = "reppoints_moment_r50_fpn_gn-neck%2Bhead_2x_coco_20200329-91babaa2.pth"
X101 = "reppoints_moment_x101_fpn_dconv_c3-c5_gn-neck+head_2x_coco_20200329-f87da1ea.pth"


def _bn(prefix: str, chs: int) -> dict[str, tuple]:
    return {**{f"{prefix}.{n}": (chs,) for n in _BN}, f"{prefix}.num_batches_tracked": ()}


def _backbone(depth: int, groups: int, dcn: bool) -> dict[str, tuple]:
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    keys = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    in_chs = 64
    for stage, n in enumerate(blocks):
        planes = 64 * 2**stage
        width = planes if groups == 1 else math.floor(planes * 4 / 64) * groups
        for j in range(n):
            p = f"backbone.layer{stage + 1}.{j}"
            keys[f"{p}.conv1.weight"] = (width, in_chs, 1, 1)
            keys[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
            if dcn and stage > 0:  # stage_with_dcn=(False, True, True, True), deform_groups 1
                keys[f"{p}.conv2.conv_offset.weight"] = (18, width, 3, 3)
                keys[f"{p}.conv2.conv_offset.bias"] = (18,)
            keys[f"{p}.conv3.weight"] = (4 * planes, width, 1, 1)
            for i, chs in ((1, width), (2, width), (3, 4 * planes)):
                keys.update(_bn(f"{p}.bn{i}", chs))
            if j == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * planes, in_chs, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", 4 * planes))
            in_chs = 4 * planes
    return keys


def _gn_conv(prefix: str, out: int, inp: int, k: int) -> dict[str, tuple]:
    return {f"{prefix}.conv.weight": (out, inp, k, k), f"{prefix}.gn.weight": (out,)} | {
        f"{prefix}.gn.bias": (out,)
    }


def _neck_and_head(k: int = 80) -> dict[str, tuple]:
    keys = {}
    for i, chs in enumerate((512, 1024, 2048)):
        keys |= _gn_conv(f"neck.lateral_convs.{i}", 256, chs, 1)
    for i in range(5):
        keys |= _gn_conv(f"neck.fpn_convs.{i}", 256, 2048 if i == 3 else 256, 3)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(3):
            keys |= _gn_conv(f"bbox_head.{tower}.{i}", 256, 256, 3)
    head = "bbox_head.reppoints"
    keys |= {f"{head}_cls_conv.weight": (256, 256, 3, 3), f"{head}_cls_out.weight": (k, 256, 1, 1)}
    keys |= {f"{head}_cls_out.bias": (k,), f"{head}_pts_init_conv.weight": (256, 256, 3, 3)}
    keys |= {f"{head}_pts_init_conv.bias": (256,), f"{head}_pts_init_out.weight": (18, 256, 1, 1)}
    keys |= {f"{head}_pts_init_out.bias": (18,), f"{head}_pts_refine_conv.weight": (256, 256, 3, 3)}
    keys |= {f"{head}_pts_refine_out.weight": (18, 256, 1, 1), f"{head}_pts_refine_out.bias": (18,)}
    return keys | {"bbox_head.moment_transfer": (2,)}


def _checkpoint(depth: int, groups: int = 1, dcn: bool = False) -> dict:
    shapes = {**_backbone(depth, groups, dcn), **_neck_and_head()}
    state = {key: torch.full(shape, float(i)) for i, (key, shape) in enumerate(shapes.items())}
    return {"meta": {"mmdet_version": "2.0.0"}, "state_dict": state}


@pytest.mark.parametrize(
    "file, depth, groups, dcn, name",
    [
        (R50, 50, 1, False, "reppoints_moment_r50_fpn_gn"),
        (X101, 101, 32, True, "reppoints_moment_x101_32x4d_dcn_fpn_gn"),
    ],
)
def test_reppoints_checkpoints_load_strictly(
    file: str, depth: int, groups: int, dcn: bool, name: str
) -> None:
    ckpt = _checkpoint(depth, groups, dcn)
    conversion = convert_mmdet(ckpt, config=file)
    assert conversion.name == name
    assert conversion.kwargs["num_classes"] == 80 and conversion.kwargs["style"] == "pytorch"
    with torch.device("meta"):
        model = create_model(name, **conversion.kwargs)
    model.load_state_dict(conversion.state, strict=True, assign=True)
    for key in ("bbox_head.moment_transfer", "bbox_head.reppoints_cls_conv.weight"):
        assert torch.equal(model.state_dict()[key], ckpt["state_dict"][key])


def test_reppoints_names_that_do_not_fit_are_refused() -> None:
    r50 = _checkpoint(50)
    with pytest.raises(CheckpointError, match="only RepPoints moment"):
        convert_mmdet(r50, config="reppoints-minmax_r50_fpn-gn_head-gn_1x_coco.py")
    with pytest.raises(CheckpointError, match="deformable"):  # the weights have no DCN
        convert_mmdet(r50, config="reppoints-moment_r50-dconv-c3-c5_fpn-gn_head-gn_2x_coco.py")
    state = {k: v for k, v in r50["state_dict"].items() if ".gn." not in k or "bbox" in k}
    with pytest.raises(CheckpointError, match="no registered RepPoints detector"):
        convert_mmdet(state, config=R50)  # an FPN without GroupNorm is not registered


def test_mmdetection_1x_dcn_offset_names_are_renamed() -> None:
    # mmdetection 1.x saved DeformConv2dPack offsets as ``conv2_offset``; mmcv renames them
    ckpt = _checkpoint(101, 32, dcn=True)
    new = "backbone.layer3.5.conv2.conv_offset.weight"
    old_state = {
        k.replace(".conv2.conv_offset.", ".conv2_offset."): v for k, v in ckpt["state_dict"].items()
    }
    assert new not in old_state
    conversion = convert_mmdet({"state_dict": old_state}, config=X101)
    assert torch.equal(conversion.state[new], ckpt["state_dict"][new])
