"""mmsegmentation checkpoint conversion: detection of the model, prefixes, validation."""

from __future__ import annotations

import pytest
import torch

from kdforge.models import create_model, list_models
from kdforge.models.segmentation import convert_mmseg, convert_mmseg_checkpoint, detect_mmseg_model


def _mmseg_state(name: str, num_classes: int = 19) -> dict[str, torch.Tensor]:
    """A state dict with mmsegmentation's key names and shapes (ours are the same)."""
    torch.manual_seed(1)
    return {
        k: v.clone() for k, v in create_model(name, num_classes=num_classes).state_dict().items()
    }


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_detect_every_registered_model(name: str) -> None:
    with torch.device("meta"):  # keys and shapes only, no memory or init time
        state = create_model(name, num_classes=7).state_dict()
    assert detect_mmseg_model(state) == (name, {"num_classes": 7})


def test_round_trip_from_a_file_with_mmseg_nesting(tmp_path) -> None:
    state = _mmseg_state("deeplabv3_r18")
    path = tmp_path / "deeplabv3_r18-d8_512x1024_80k_cityscapes.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": state, "optimizer": {}}, path)
    converted = convert_mmseg(path).state
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], v) for k, v in state.items())
    model = create_model("deeplabv3_r18")
    model.load_state_dict(converted)  # strict
    assert torch.equal(model.decode_head.conv_seg.weight, state["decode_head.conv_seg.weight"])


def test_prefix_selects_the_mmrazor_student_and_old_buffers_are_filled() -> None:
    student = _mmseg_state("pspnet_r18")
    with torch.device("meta"):
        teacher = create_model("pspnet_r101").state_dict()
    wrapped = {f"architecture.{k}": v for k, v in student.items()}
    wrapped |= {f"distiller.teacher.{k}": v for k, v in teacher.items()}
    wrapped = {k: v for k, v in wrapped.items() if not k.endswith("num_batches_tracked")}
    config = "pspnet_r18-d8_4xb2-80k_cityscapes-512x1024"
    converted = convert_mmseg({"state_dict": wrapped}, config, prefix="architecture.").state
    assert converted.keys() == student.keys()
    create_model("pspnet_r18").load_state_dict(converted)


def test_errors_list_unmatched_missing_and_shapes() -> None:
    state = _mmseg_state("pspnet_r18")
    state["decode_head.extra.weight"] = torch.zeros(1)
    del state["auxiliary_head.conv_seg.bias"]
    state["backbone.stem.0.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError) as err:
        convert_mmseg_checkpoint(state, create_model("pspnet_r18"))
    text = str(err.value)
    assert "unmatched (1): decode_head.extra.weight" in text
    assert "missing (1): auxiliary_head.conv_seg.bias" in text
    assert "backbone.stem.0.weight: checkpoint (16, 3, 3, 3) vs model (32, 3, 3, 3)" in text
    with pytest.raises(ValueError, match="not an mmsegmentation PSPNet/DeepLabV3"):
        detect_mmseg_model({"backbone.stem.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="3 blocks in backbone.layer3"):
        detect_mmseg_model(
            {
                "decode_head.psp_modules.0.1.conv.weight": torch.zeros(1),
                "backbone.stem.0.weight": torch.zeros(1),
                **{f"backbone.layer3.{i}.conv1.weight": torch.zeros(1) for i in range(3)},
            }
        )


def test_convert_command_round_trip(tmp_path) -> None:
    from kdforge.cli import main
    from kdforge.models import load_model

    src = tmp_path / "pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth"
    state = _mmseg_state("pspnet_r18")
    torch.save({"meta": {}, "state_dict": state}, src)
    main(["convert", "mmseg", str(src), str(tmp_path / "psp.safetensors")])
    model = load_model(tmp_path / "psp.safetensors")
    key = "decode_head.conv_seg.weight"
    assert torch.equal(model.state_dict()[key], state[key])
