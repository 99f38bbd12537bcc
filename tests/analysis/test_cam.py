"""``kdforge visualize cam``: PNGs of teacher and student CAMs for zoo CIFAR and ImageNet models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.analysis.cam import class_names, compute_cams, visualize_cam
from kdforge.cli import main
from kdforge.config import load_config
from kdforge.data import write_fake_cifar
from kdforge.models import create_model

CONFIGS = Path(__file__).resolve().parents[2] / "kdforge" / "recipes"


def _images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _assert_pngs(paths: list[Path], count: int) -> None:
    assert len(paths) == count and len(set(paths)) == count
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100
            image.verify()


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar100")
    write_fake_cifar(root, "cifar100", num_train=8, num_test=8)
    return root


@pytest.mark.parametrize(
    "recipe", ["cifar100/cat_kd/resnet56_resnet20.yaml", "cifar100/baseline/resnet20.yaml"]
)
def test_cifar_recipe_writes_one_png_per_image(recipe, cifar100_root, tmp_path):
    student = create_model("resnet20")
    checkpoint = tmp_path / "last.pt"
    torch.save({"student": student.state_dict(), "epoch": 1}, checkpoint)  # a kdforge run's
    images = _images(tmp_path / "in", [(32, 32), (45, 60)])
    images.append(images[0])  # the same name twice gets two files
    overrides = [f"data.root={cifar100_root}", "teacher.pretrained=null"]
    out = visualize_cam(CONFIGS / recipe, checkpoint, images, tmp_path / "out", 2, overrides)
    _assert_pngs(out, 3)


def test_imagenet_recipe_through_the_cli(tmp_path, capsys):
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for cls in ("n01440764", "n01443537", "n01484850"):
            _images(root / split / cls, [(20, 24)])
    images = _images(tmp_path / "in", [(80, 100)])
    recipe = CONFIGS / "imagenet/cat_kd/resnet34_resnet18.yaml"
    overrides = [f"data.root={root}", "teacher.pretrained=null", "data.options.image_size=64"]
    cfg = load_config(recipe, overrides)
    assert class_names(cfg) == ["n01440764", "n01443537", "n01484850"]
    out = str(tmp_path / "out")
    args = ["visualize", "cam", str(recipe), "--images", *map(str, images), "--out", out]
    main([*args, "--top-k", "2", "--set", *overrides])
    written = [
        Path(line.removeprefix("wrote ")) for line in capsys.readouterr().out.split("\n") if line
    ]
    _assert_pngs(written, 1)


def test_class_names_of_cifar_or_none_without_data(cifar100_root):
    recipe = CONFIGS / "cifar100/cat_kd/resnet56_resnet20.yaml"
    names = class_names(load_config(recipe, [f"data.root={cifar100_root}"]))
    assert len(names) == 100 and names[0] == "apple"
    assert class_names(load_config(recipe, ["data.root=/nonexistent"])) is None


def test_compute_cams_pool_back_to_the_bias_free_logits():
    model = create_model("resnet8", num_classes=5).eval()
    logits, cams = compute_cams(model, torch.randn(2, 3, 32, 32))
    assert cams.shape == (2, 5, 8, 8)
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + model.fc.bias, logits)
