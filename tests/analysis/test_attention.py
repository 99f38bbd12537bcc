"""``kdforge visualize attention``: teacher and student-projector maps written as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge import Distiller, create_model
from kdforge.analysis.attention import attention_received, visualize_attention
from kdforge.cli import main
from kdforge.config import ConfigError
from kdforge.losses import CAKDLoss

RECIPE = """\
data: {name: imagefolder, root: unused}
teacher: {name: vit_ti_16}
student: {name: resnet18}
loss:
  ce: {label_smoothing: 0.1}
  distil: {type: cakd, heads: 8}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """A recipe, a run checkpoint of it (3 classes, projector included) and two images."""
    root = tmp_path_factory.mktemp("attention")
    recipe = root / "cakd.yaml"
    recipe.write_text(RECIPE)
    torch.manual_seed(0)
    teacher, student = create_model("vit_ti_16", 3), create_model("resnet18", 3)
    distiller = Distiller(
        teacher, student, {"distil": CAKDLoss(heads=8)}, torch.zeros(1, 3, 224, 224)
    )
    checkpoint = root / "last.pt"
    torch.save(
        {"student": student.state_dict(), "terms": distiller.terms.state_dict(), "num_classes": 3},
        checkpoint,
    )
    images = []
    rng = np.random.default_rng(0)
    for name in ("a/cat.png", "b/cat.jpg"):  # the same stem twice
        path = root / name
        path.parent.mkdir()
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return recipe, checkpoint, images


def test_attention_received_averages_softmax_rows() -> None:
    logits = torch.randn(2, 5, 5)
    got = attention_received(logits)
    assert got.shape == (2, 5)
    torch.testing.assert_close(got.sum(-1), torch.ones(2))
    torch.testing.assert_close(got, logits.softmax(-1).mean(-2))


def test_teacher_and_projector_maps(setup, tmp_path: Path) -> None:
    recipe, checkpoint, images = setup
    written = visualize_attention(recipe, checkpoint, images, tmp_path, top_k=2)
    assert [p.name for p in written] == ["cat_attention.png", "cat_1_attention.png"]
    with Image.open(written[0]) as both:
        assert both.width > 500
        both_height = both.height
    alone = visualize_attention(recipe, None, images[:1], tmp_path / "teacher", top_k=2)
    with Image.open(alone[0]) as teacher_only:
        assert teacher_only.height < both_height  # no projector weights: teacher row only


def test_cli_and_errors(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe, checkpoint, images = setup
    argv = ["visualize", "attention", str(recipe), "--checkpoint", str(checkpoint)]
    main([*argv, "--images", str(images[0]), "--out", str(tmp_path), "--top-k", "1"])
    assert "cat_attention.png" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="teacher"):
        visualize_attention(recipe, None, images, tmp_path, overrides=["teacher.name=null"])
