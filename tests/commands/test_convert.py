"""``convert``: checkpoints of kdforge models saved as mmdetection/mmsegmentation would save
them, under those projects' file names, converted and rebuilt by ``load_model`` alone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from kdforge import create_model, load_model
from kdforge.cli import main
from kdforge.commands.convert import convert
from kdforge.errors import CheckpointError

SMALL = {"fpn_channels": 32, "feat_channels": 64, "stacked_convs": 1}  # kept by the weights
TRICKS = {  # what "center-normbbox-centeronreg-giou" sets beyond the weights
    "norm_on_bbox": True,
    "centerness_on_reg": True,
    "center_sampling": True,
    "loss_bbox": "giou",
    "nms_iou": 0.6,
}
FCOS_NAME = "fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco_20200603-67b3859f"


def _randomised(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with random norm layers, so that no block is the identity
    (zero-initialised residual BNs would hide the backbone style)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.1)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.running_mean, 0, 0.1)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
    return model.eval()


def _outputs(model: nn.Module) -> list[torch.Tensor]:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    return [t for level in out.values() for t in level] if isinstance(out, dict) else [out]


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_outputs(a), _outputs(b), strict=True))


def _save_mmlab(model: nn.Module, path, legacy_fcos: bool = False) -> None:
    """Save ``model`` as an OpenMMLab checkpoint (our keys are theirs; FCOS optionally with
    mmdetection 1.x's ``fcos_cls``/``fcos_reg``/``fcos_centerness`` names)."""
    state = {}
    for key, value in model.state_dict().items():
        if legacy_fcos:
            key = key.replace("bbox_head.conv_", "bbox_head.fcos_")
        state[key] = value
    torch.save({"meta": {"mmdet_version": "2.25.0"}, "state_dict": state}, path)


def _metadata(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


CASES = [  # registered name, mmdet file name, builder keywords the name carries
    ("fcos_r50_fpn", FCOS_NAME, {"style": "caffe", "norm_requires_grad": False, **TRICKS}),
    (
        "fcos_r18_fpn",
        "fcos_r18_fpn_gn-head-center-normbbox-centeronreg-giou_8xb8-amp-lsj-200e_coco_20230224-1a2b3c4d",
        {"style": "pytorch", "norm_requires_grad": True, **TRICKS},
    ),
    ("fcos_r18_fpn", "fcos_r18_caffe_fpn_gn-head_1x_coco", {"style": "caffe"}),
    ("retinanet_r50_fpn", "retinanet_r50_caffe_fpn_1x_coco_20200531-f11027c5", {"style": "caffe"}),
    ("retinanet_r18_fpn", "retinanet_r18_fpn_1x_coco_20220407_171055-614fd399", {}),
    ("atss_r18_fpn", "atss_r18_fpn_1x_coco", {"style": "pytorch"}),
    ("gfl_r18_fpn", "gfl_r18_fpn_ms-2x_coco", {"style": "pytorch"}),
]


@pytest.mark.parametrize("name, file_name, flags", CASES)
def test_mmdet_flags_from_the_file_name_rebuild_the_model(name, file_name, flags, tmp_path):
    kwargs = {**SMALL, "conv_bias": True} if name.startswith("fcos") else SMALL
    original = _randomised(create_model(name, num_classes=3, **kwargs, **flags))
    src = tmp_path / f"{file_name}.pth"
    _save_mmlab(original, src, legacy_fcos=name.startswith("fcos"))
    out = convert("mmdet", src, tmp_path / "converted.safetensors")
    metadata = _metadata(out)
    assert metadata["model_name"] == name and metadata["num_classes"] == "3"
    stored = json.loads(metadata["model_kwargs"])
    assert stored.items() >= {**kwargs, **flags}.items()
    rebuilt = load_model(out).eval()
    assert _same(rebuilt, original)
    assert rebuilt.bbox_head.test_cfg == original.bbox_head.test_cfg  # nms_iou and the rest
    if flags.get("norm_on_bbox") or name.startswith("retinanet_r50"):
        # the flags matter: the same weights in the model the weights alone describe
        # compute something else
        wrong = create_model(name, num_classes=3, **kwargs).eval()
        wrong.load_state_dict(original.state_dict())
        assert not _same(wrong, original)


def test_fcos_without_a_config_name_is_refused_naming_the_flags(tmp_path):
    original = create_model("fcos_r18_fpn", num_classes=3, **SMALL)
    src = tmp_path / "teacher.pth"
    _save_mmlab(original, src)
    dst = tmp_path / "never.safetensors"
    with pytest.raises(CheckpointError) as err:
        convert("mmdet", src, dst, norm_on_bbox=True)
    message = str(err.value)
    assert "teacher.pth is not an mmdetection config name" in message and "\n" not in message
    for flag in ("style=caffe|pytorch", "centerness_on_reg=true|false", "nms_iou=0.5|0.6"):
        assert flag in message
    assert "norm_on_bbox" not in message  # given
    assert not dst.exists()
    with pytest.raises(SystemExit, match=r"--kwarg style=caffe\|pytorch"):
        main(["convert", "mmdet", str(src), str(dst)])


def test_options_win_over_the_file_name(tmp_path, capsys):
    flags = {"style": "caffe", "norm_requires_grad": False, **TRICKS}
    original = _randomised(create_model("fcos_r18_fpn", num_classes=3, **SMALL, **flags))
    src = tmp_path / "fcos_r18_fpn_gn-head_1x_coco.pth"  # says: none of the tricks, pytorch
    _save_mmlab(original, src)
    given = " ".join(f"{k}={str(v).lower()}" for k, v in TRICKS.items())
    dst = tmp_path / "fcos.pth"
    main(["convert", "mmdet", str(src), str(dst), "--kwarg", "style=caffe", *given.split()])
    printed = capsys.readouterr().out
    assert "from the option: style='caffe'" in printed and "norm_on_bbox=True" in printed
    assert _same(load_model(dst).eval(), original)
    # --config replaces the file name
    convert("mmdet", src, dst, config=FCOS_NAME.replace("r50", "r18"))
    assert _same(load_model(dst).eval(), original)


def test_names_that_contradict_the_weights_are_refused(tmp_path):
    src = tmp_path / "retinanet_r101_fpn_2x_coco_20200131-5560aee8.pth"
    _save_mmlab(create_model("fcos_r18_fpn", num_classes=3, **SMALL), src)
    with pytest.raises(CheckpointError, match="names a retinanet config, but the weights"):
        convert("mmdet", src, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="deformable convolutions"):
        convert(
            "mmdet",
            src,
            tmp_path / "x.safetensors",
            config=FCOS_NAME.replace("r50", "r18") + "_dcn",
        )


@pytest.mark.parametrize("name", ["pspnet_r18", "deeplabv3_mobilenetv2"])
def test_mmseg_d8_names_rebuild_the_model(name, tmp_path):
    original = _randomised(create_model(name, num_classes=5))
    head, backbone = name.split("_")
    token = {"r18": "r18-d8", "mobilenetv2": "m-v2-d8"}[backbone]
    src = tmp_path / f"{head}_{token}_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth"
    _save_mmlab(original, src)
    out = convert("mmseg", src, tmp_path / "seg.safetensors")
    assert _metadata(out)["model_name"] == name
    assert _same(load_model(out).eval(), original)


@pytest.mark.parametrize(
    "file_name, refusal",
    [
        ("psp.pth", "not an mmsegmentation config name"),
        ("pspnet_r18-d32_512x1024_80k_cityscapes.pth", "output stride 32"),
        ("pspnet_r18-d8_769x769_80k_cityscapes.pth", "align_corners=True"),
        ("pspnet_r18-d16-mg124_512x1024_80k_cityscapes.pth", "stride 16 .*; multi-grid"),
        ("deeplabv3_r18-d8_512x1024_80k_cityscapes.pth", "another model than the weights"),
    ],
)
def test_mmseg_settings_kdforge_does_not_build_are_refused(file_name, refusal, tmp_path):
    src = tmp_path / "x.pth"
    _save_mmlab(create_model("pspnet_r18"), src)
    with pytest.raises(CheckpointError, match=refusal):
        convert("mmseg", src, tmp_path / "y.pth", config=file_name)
    assert not (tmp_path / "y.pth").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_model_without_metadata_says_what_to_use(suffix, tmp_path):
    path = tmp_path / f"plain{suffix}"
    state = create_model("resnet8").state_dict()
    if suffix == ".pth":
        torch.save({"state_dict": state}, path)
    else:
        save_file(state, str(path))
    create_model("resnet8", pretrained=path)  # the weights are fine, the name is missing
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(err.value) == (
        f"{path} does not name its model (not written by kdforge export or convert); "
        "load it with create_model(name, pretrained=...)"
    )


FRCNN_SMALL = {"fpn_channels": 32, "feat_channels": 32, "fc_out_channels": 64}


@pytest.mark.parametrize(
    ("file_name", "style"),
    [
        ("faster_rcnn_r18_fpn_2x_coco_bbox_mAP-0.398_20200504_210455-1d2dac9c", "pytorch"),
        ("faster-rcnn_r18-caffe_fpn_1x_coco", "caffe"),
    ],
)
def test_faster_rcnn_is_detected_and_its_style_read_from_the_name(file_name, style, tmp_path):
    original = create_model("faster_rcnn_r18_fpn", num_classes=3, **FRCNN_SMALL, style=style)
    original = _randomised(original)
    src = tmp_path / f"{file_name}.pth"
    _save_mmlab(original, src)
    out = convert("mmdet", src, tmp_path / "converted.safetensors")
    metadata = _metadata(out)
    assert metadata["model_name"] == "faster_rcnn_r18_fpn" and metadata["num_classes"] == "3"
    stored = json.loads(metadata["model_kwargs"])
    assert stored.items() >= {**FRCNN_SMALL, "style": style}.items()
    assert stored["norm_requires_grad"] == (style == "pytorch")
    rebuilt = load_model(out).eval()
    assert _same(rebuilt, original)
    state = rebuilt.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items())


def test_faster_rcnn_without_a_config_name_is_refused(tmp_path):
    src = tmp_path / "teacher.pth"
    _save_mmlab(create_model("faster_rcnn_r18_fpn", num_classes=3, **FRCNN_SMALL), src)
    with pytest.raises(CheckpointError, match="do not carry style: pass --kwarg style=caffe"):
        convert("mmdet", src, tmp_path / "out.safetensors")


CASCADE_SMALL = {"fpn_channels": 16, "feat_channels": 16, "fc_out_channels": 32}


@pytest.mark.parametrize(
    ("file_name", "with_mask"),
    [
        ("cascade_mask_rcnn_r18_fpn_20e_coco_20200512_161033-bdb5126a", True),
        ("cascade-rcnn_r18_fpn_1x_coco", False),
    ],
)
def test_cascade_rcnn_is_detected_with_or_without_masks(file_name, with_mask, tmp_path):
    mask = {"with_mask": True, "mask_channels": 8} if with_mask else {"with_mask": False}
    original = create_model("cascade_mask_rcnn_r18_fpn", num_classes=3, **mask, **CASCADE_SMALL)
    original = _randomised(original)
    src = tmp_path / f"{file_name}.pth"
    _save_mmlab(original, src)
    out = convert("mmdet", src, tmp_path / "converted.safetensors")
    metadata = _metadata(out)
    assert metadata["model_name"] == "cascade_mask_rcnn_r18_fpn"
    assert metadata["num_classes"] == "3"
    stored = json.loads(metadata["model_kwargs"])
    assert stored.items() >= {**CASCADE_SMALL, **mask, "style": "pytorch"}.items()
    rebuilt = load_model(out).eval()
    state = rebuilt.state_dict()
    assert state.keys() == original.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items())
    assert any(k.startswith("roi_head.mask_head.2.") for k in state) == with_mask


def test_cascade_names_with_another_backbone_are_refused(tmp_path):
    src = tmp_path / "cascade_mask_rcnn_x101_64x4d_fpn_20e_coco_20200512_161033-bdb5126a.pth"
    _save_mmlab(create_model("cascade_mask_rcnn_r18_fpn", num_classes=3, **CASCADE_SMALL), src)
    with pytest.raises(CheckpointError, match="names a cascade_mask_rcnn config, but the weights"):
        convert("mmdet", src, tmp_path / "x.safetensors")
