"""mmdetection checkpoint conversion, on state dicts written with mmdetection's key names.

The state dicts are built here from mmdetection's naming (``ResNet``, ``FPN`` and the
heads' ``ConvModule``/``Scale``/``Integral`` names), not from our models, so a renamed
parameter on our side fails these tests.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.models import create_model, load_model
from kdforge.models.detection import convert_mmdet, convert_mmdet_checkpoint, detect_mmdet_model

_BN = ("weight", "bias", "running_mean", "running_var")


def _bn(prefix: str, chs: int) -> dict[str, tuple]:
    shapes = {f"{prefix}.{n}": (chs,) for n in _BN}
    return {**shapes, f"{prefix}.num_batches_tracked": ()}


def _mmdet_resnet(depth: int, groups: int = 1, base_width: int = 4) -> dict[str, tuple]:
    """mmdetection ``ResNet`` (``groups=1``) or ``ResNeXt`` keys and shapes."""
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    keys = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    in_chs = 64
    for stage, n in enumerate(blocks):
        planes = 64 * 2**stage
        # mmdetection's ResNeXt Bottleneck: width = floor(planes * base_width / 64) * groups
        width = planes if groups == 1 else math.floor(planes * base_width / 64) * groups
        for j in range(n):
            p = f"backbone.layer{stage + 1}.{j}"
            keys[f"{p}.conv1.weight"] = (width, in_chs, 1, 1)
            keys[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
            keys[f"{p}.conv3.weight"] = (4 * planes, width, 1, 1)
            for i, chs in ((1, width), (2, width), (3, 4 * planes)):
                keys.update(_bn(f"{p}.bn{i}", chs))
            if j == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * planes, in_chs, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", 4 * planes))
            in_chs = 4 * planes
    return keys


def _mmdet_fpn(on_input: bool) -> dict[str, tuple]:
    keys = {}
    for i, chs in enumerate((512, 1024, 2048)):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = (256, chs, 1, 1)
        keys[f"neck.lateral_convs.{i}.conv.bias"] = (256,)
    for i in range(5):
        chs = 2048 if i == 3 and on_input else 256
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (256, chs, 3, 3)
        keys[f"neck.fpn_convs.{i}.conv.bias"] = (256,)
    return keys


def _mmdet_head(kind: str, k: int = 80) -> dict[str, tuple]:
    keys = {}
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            keys[f"bbox_head.{tower}.{i}.conv.weight"] = (256, 256, 3, 3)
            if kind == "retinanet":
                keys[f"bbox_head.{tower}.{i}.conv.bias"] = (256,)
            else:
                keys[f"bbox_head.{tower}.{i}.gn.weight"] = (256,)
                keys[f"bbox_head.{tower}.{i}.gn.bias"] = (256,)
    predictors = {
        "retinanet": {"retina_cls": 9 * k, "retina_reg": 36},
        "fcos": {"conv_cls": k, "conv_reg": 4, "conv_centerness": 1},
        "atss": {"atss_cls": k, "atss_reg": 4, "atss_centerness": 1},
        "gfl": {"gfl_cls": k, "gfl_reg": 68},
    }[kind]
    for name, out in predictors.items():
        keys[f"bbox_head.{name}.weight"] = (out, 256, 3, 3)
        keys[f"bbox_head.{name}.bias"] = (out,)
    if kind != "retinanet":
        keys.update({f"bbox_head.scales.{i}.scale": () for i in range(5)})
    if kind == "gfl":
        keys["bbox_head.integral.project"] = (17,)
    return keys


def _mmdet_checkpoint(kind: str, depth: int, groups: int = 1, base_width: int = 4) -> dict:
    backbone = _mmdet_resnet(depth, groups, base_width)
    shapes = {**backbone, **_mmdet_fpn(kind == "retinanet"), **_mmdet_head(kind)}
    state = {key: torch.full(shape, float(i)) for i, (key, shape) in enumerate(shapes.items())}
    return {"meta": {"mmdet_version": "3.0.0"}, "state_dict": state}


@pytest.mark.parametrize(
    "kind, depth", [("retinanet", 50), ("fcos", 50), ("atss", 50), ("gfl", 50), ("gfl", 101)]
)
def test_mmdet_checkpoint_covers_every_key(kind: str, depth: int) -> None:
    checkpoint = _mmdet_checkpoint(kind, depth)
    name, kwargs = detect_mmdet_model(checkpoint["state_dict"])
    assert name == f"{kind}_r{depth}_fpn" and kwargs["num_classes"] == 80
    model = create_model(name, **kwargs)
    state = convert_mmdet_checkpoint(checkpoint, model)
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state)  # strict
    ours = model.state_dict()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize(
    "name", ["retinanet_x101_32x4d_fpn", "retinanet_x101_64x4d_fpn", "fcos_x101_64x4d_fpn"]
)
def test_mmdet_resnext_checkpoint_covers_every_key(name: str) -> None:
    kind, groups = name.split("_")[0], int(name.split("_")[2].split("x")[0])
    state = _mmdet_checkpoint(kind, 101, groups, 4)["state_dict"]
    assert state["backbone.layer4.0.conv2.weight"].shape == (32 * groups, 32, 3, 3)
    detected, kwargs = detect_mmdet_model(state)
    assert detected == name
    model = create_model(detected, **kwargs)
    converted = convert_mmdet_checkpoint(state, model)
    assert set(converted) == set(model.state_dict())
    model.load_state_dict(converted)  # strict
    for key in ("backbone.layer3.22.conv2.weight", "backbone.layer4.2.bn3.running_var"):
        assert torch.equal(model.state_dict()[key], state[key]), key


def test_detect_refuses_an_unregistered_resnext() -> None:
    state = _mmdet_checkpoint("atss", 101, 32, 4)["state_dict"]
    with pytest.raises(ValueError, match="no registered detector 'atss_x101_32x4d_fpn'"):
        detect_mmdet_model(state)


def test_converter_reports_unmatched_missing_and_shape(tmp_path) -> None:
    checkpoint = _mmdet_checkpoint("atss", 50)
    state = checkpoint["state_dict"]
    model = create_model("atss_r50_fpn")
    del state["bbox_head.atss_centerness.weight"]
    state["bbox_head.extra_conv.weight"] = torch.zeros(1)
    state["bbox_head.scales.0.scale"] = torch.zeros(2)
    path = tmp_path / "atss.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError) as err:
        convert_mmdet_checkpoint(path, model)
    message = str(err.value)
    assert "unmatched (1): bbox_head.extra_conv.weight" in message
    assert "missing (1): bbox_head.atss_centerness.weight" in message
    assert "bbox_head.scales.0.scale: checkpoint (2,) vs model ()" in message


def test_converter_unwraps_ddp_and_legacy_fcos_names() -> None:
    state = _mmdet_checkpoint("fcos", 50)["state_dict"]
    legacy = {}
    for key, value in state.items():
        for old in ("cls", "reg", "centerness"):
            key = key.replace(f"bbox_head.conv_{old}.", f"bbox_head.fcos_{old}.")
        legacy[f"module.{key}"] = value
    del legacy["module.backbone.bn1.num_batches_tracked"]  # old checkpoints lack these
    # builds the detector it detects, flags from the config name
    converted = convert_mmdet(legacy, config="fcos_r50_caffe_fpn_gn-head_1x_coco").state
    model = create_model("fcos_r50_fpn")
    model.load_state_dict(converted)
    torch.testing.assert_close(model.bbox_head.conv_cls.bias, state["bbox_head.conv_cls.bias"])


def test_detect_rejects_other_checkpoints() -> None:
    with pytest.raises(ValueError, match="not an mmdetection"):
        detect_mmdet_model({"backbone.conv1.weight": torch.zeros(1)})


def test_convert_command_writes_a_checkpoint_that_loads(tmp_path) -> None:
    from kdforge.cli import main

    src = tmp_path / "gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth"
    torch.save(_mmdet_checkpoint("gfl", 50), src)
    dst = tmp_path / "gfl.safetensors"
    main(["convert", "mmdet", str(src), str(dst)])
    model = load_model(dst)
    assert torch.equal(
        model.state_dict()["bbox_head.gfl_cls.weight"],
        _mmdet_checkpoint("gfl", 50)["state_dict"]["bbox_head.gfl_cls.weight"],
    )
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, bad)
    with pytest.raises(SystemExit, match="kdforge convert: error"):
        main(["convert", "mmdet", str(bad), str(tmp_path / "never.pth")])
    assert not (tmp_path / "never.pth").exists()


def test_fcos_conv_bias_checkpoint_is_detected() -> None:
    state = _mmdet_checkpoint("fcos", 50)["state_dict"]
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            state[f"bbox_head.{tower}.{i}.conv.bias"] = torch.full((256,), float(i))
    name, kwargs = detect_mmdet_model(state)
    assert name == "fcos_r50_fpn" and kwargs["conv_bias"] is True
    model = create_model(name, **kwargs)
    model.load_state_dict(convert_mmdet_checkpoint(state, model))
    assert torch.equal(
        model.bbox_head.reg_convs[3].conv.bias, state["bbox_head.reg_convs.3.conv.bias"]
    )
    assert "conv_bias" not in detect_mmdet_model(_mmdet_checkpoint("fcos", 50)["state_dict"])[1]
