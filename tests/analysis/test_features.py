"""``visualize features``: reductions, token grids, layer specs, and PNGs for the three tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.analysis.features import (
    feature_map,
    layer_pairs,
    normalised_map,
    visualize_features,
)
from kdforge.cli import main
from kdforge.errors import ConfigError
from kdforge.models import create_model


def _image(path: Path, size: tuple[int, int] = (40, 48)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_l2_and_abs_mean_reductions_are_normalised_to_unit_range():
    feature = torch.zeros(1, 2, 2, 2)
    feature[0, :, 0, 0] = torch.tensor([3.0, -4.0])  # L2 5, mean |x| 3.5
    feature[0, :, 1, 1] = torch.tensor([1.0, 0.0])  # L2 1, mean |x| 0.5
    for reduce, middle in (("l2", 0.2), ("abs_mean", 0.5 / 3.5)):
        m = normalised_map(feature, (2, 2), reduce)
        assert m.shape == (1, 2, 2) and m.min() == 0 and m.max() == 1
        assert m[0, 1, 1].item() == pytest.approx(middle)


def test_padding_is_cropped_before_upsampling():
    feature = torch.zeros(1, 1, 4, 4)
    feature[..., :2, :2] = 1.0  # the image's part; the rest is padding
    feature[..., 3, 3] = 9.0  # a strong response in the padding is not shown
    m = normalised_map(feature, (8, 8), keep=(0.5, 0.5))
    assert torch.allclose(m, torch.zeros_like(m))  # a flat map: nothing to show


def test_tokens_become_a_grid_and_other_values_are_refused():
    tokens = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)  # class token + 2x2 patches
    grid = feature_map(tokens, "blocks.0")
    assert grid.shape == (2, 3, 2, 2) and grid[0, :, 0, 0].tolist() == tokens[0, 1].tolist()
    with pytest.raises(ValueError, match="not a feature map"):
        feature_map(torch.zeros(2, 10), "fc")
    with pytest.raises(ValueError, match="ran 2 times"):
        feature_map([torch.zeros(1, 1, 1, 1)] * 2, "shared")


def test_layer_specs_pair_teacher_and_student_paths():
    student, teacher = create_model("resnet8"), create_model("resnet14")
    assert layer_pairs(["layer2", "layer3,layer2"], teacher, student) == [
        ("layer2", "layer2"),
        ("layer3", "layer2"),
    ]
    assert layer_pairs(None, teacher, student) == [("layer3", "layer3")]
    assert layer_pairs(["layer1"], None, student) == [(None, "layer1")]


def test_classification_through_the_cli(tiny_overrides, tmp_path, capsys, check_png):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("teacher: {name: resnet14}\nstudent: {name: resnet8}\n")
    checkpoint = tmp_path / "student.pt"
    torch.save({"student": create_model("resnet8", num_classes=10).state_dict()}, checkpoint)
    images = [_image(tmp_path / "a.png"), _image(tmp_path / "b.png", (32, 32))]
    out = tmp_path / "out"
    files = [str(image) for image in images]
    args = ["--out", str(out), "--layers", "layer2", "layer3", "--reduce", "abs_mean"]
    command = ["visualize", "features", str(recipe), "--checkpoint", str(checkpoint)]
    main([*command, "--images", *files, *args, "--set", *tiny_overrides])
    written = [line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines()]
    assert [Path(w).name for w in written] == ["a_features.png", "b_features.png"]
    for path in written:
        check_png(Path(path), 800, 400)  # 4 columns, 2 rows


def test_unknown_layer_names_the_closest(tiny_overrides, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8}\n")
    with pytest.raises(ConfigError, match="'layer3'"):
        visualize_features(
            recipe, None, [_image(tmp_path / "a.png")], tmp_path, ["layer33"], "l2", tiny_overrides
        )


def test_detector_fpn_levels_and_segmentor(
    shapes_root, detection_overrides, segmentation_overrides, tmp_path, check_png
):
    image = shapes_root / "val" / "000001.png"
    (det,) = visualize_features(
        None, None, [image], tmp_path / "det", None, "l2", detection_overrides
    )
    check_png(det, 800, 5 * 250)  # P3..P7: five rows
    (seg,) = visualize_features(
        None, None, [image], tmp_path / "seg", ["backbone.layer4"], "l2", segmentation_overrides
    )
    check_png(seg, 800, 250)
