"""`kdforge check-data RECIPE`: decodes every image (and mask), lists every problem with its
file, prints a summary per split and exits with status 1 if anything is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdforge.cli import main
from kdforge.data.shapes import write_shapes_dataset


def _recipe(tmp_path: Path, task: str, data: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"task: {task}\nstudent: {{name: resnet8}}\ndata: {data}\n")
    return path


def _check(argv: list[str], capsys) -> tuple[str | None, str, str]:
    """Run check-data; ``(error line or None, stdout, stderr)``."""
    try:
        main(["check-data", *argv])
        error = None
    except SystemExit as exit_:
        error = str(exit_.code)
    out, err = capsys.readouterr()
    return error, out, err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An ImageNet-layout folder: 3 bad files in train, a 16-bit PNG and a rotated JPEG."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (50, 60, 70)).save(root / split / cls / "ok.png")
    (root / "train" / "a" / "empty.jpg").write_bytes(b"")
    (root / "train" / "a" / "page.jpg").write_text("<html>403 Forbidden</html>")
    Image.effect_noise((64, 64), 30).convert("RGB").save(root / "full.jpg")
    (root / "train" / "b" / "cut.jpg").write_bytes((root / "full.jpg").read_bytes()[:300])
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(root / "train" / "b" / "16.png")
    rotated = Image.new("RGB", (8, 6))
    exif = rotated.getexif()
    exif[0x0112] = 8
    rotated.save(root / "val" / "b" / "phone.jpg", exif=exif)
    return root


def test_every_bad_image_is_listed_and_the_exit_status_is_1(folder, tmp_path, capsys) -> None:
    recipe = _recipe(tmp_path, "classification", f"{{name: imagefolder, root: {folder}}}")
    error, out, _ = _check([str(recipe), "--no-progress", "--workers", "2"], capsys)
    assert error == (
        f"kdforge check-data: error: 3 problem(s) in the data of {recipe} (listed above); fix "
        "or remove those files, or train with --set data.on_bad_sample=skip to skip them"
    )
    lines = out.splitlines()
    problems = [line for line in lines if line.startswith("  train: ") and "note:" not in line]
    assert len(problems) == 3, out
    for name, words in (("empty.jpg", "is empty"), ("page.jpg", "is not an image")):
        assert any(f"{folder / 'train' / 'a' / name}' {words}" in p for p in problems), out
    assert any(f"{folder / 'train' / 'b' / 'cut.jpg'}' is truncated" in p for p in problems)
    assert "16.png" not in out  # 16-bit grey is converted, not a problem
    assert any("val: note: 1 image(s) carry an EXIF orientation" in line for line in lines)
    assert "phone.jpg (rotate 90 counter-clockwise)" in out
    assert lines[-1] == "train: 6 samples, 3 problem(s); val: 3 samples, 0 problem(s)"


def test_a_clean_split_passes_with_a_progress_bar(folder, tmp_path, capsys) -> None:
    recipe = _recipe(tmp_path, "classification", f"{{name: imagefolder, root: {folder}}}")
    error, out, err = _check([str(recipe), "--split", "val"], capsys)
    assert error is None
    assert out.splitlines()[-2:] == [
        "val: 3 samples, 0 problem(s)",
        f"no problems in the data of {recipe}",
    ]
    assert "checking val" in err and "3/3" in err  # tqdm on stderr


def test_overrides_apply_and_memory_data_sets_have_nothing_to_decode(
    cifar10_root, tmp_path, capsys
) -> None:
    recipe = _recipe(tmp_path, "classification", "{name: cifar100, root: nowhere}")
    argv = [str(recipe), "--no-progress", "--set", "data.name=cifar10", f"data.root={cifar10_root}"]
    error, out, _ = _check(argv, capsys)
    assert error is None and "train: note: CIFAR is read from memory" in out


def test_segmentation_pairs_bad_from_headers_or_pixels_are_all_listed(tmp_path, capsys) -> None:
    root = write_shapes_dataset(tmp_path / "shapes", num_train=4, num_val=1, image_size=(32, 32))
    masks = root / "masks" / "train"
    Image.new("L", (16, 16)).save(masks / "000002.png")  # wrong size: found from the headers
    Image.fromarray(np.full((32, 32), 9, dtype=np.uint8)).save(masks / "000003.png")  # id 9
    (root / "train" / "000004.png").write_bytes(b"")
    options = "{classes: 5, image_dir: '{split}', mask_dir: 'masks/{split}'}"
    recipe = _recipe(
        tmp_path, "segmentation", f"{{name: segfolder, root: {root}, options: {options}}}"
    )
    error, out, _ = _check([str(recipe), "--no-progress"], capsys)
    assert error is not None and "3 problem(s)" in error
    assert f"{root / 'train' / '000002.png'}' is 32x32 but mask" in out
    assert f"{masks / '000003.png'}' holds class ids 9, outside 0..4" in out
    assert f"{root / 'train' / '000004.png'}' is empty" in out
    assert out.splitlines()[-1] == "train: 4 samples, 3 problem(s); val: 1 samples, 0 problem(s)"


def test_coco_entries_are_all_listed_before_decoding(tmp_path, capsys) -> None:
    root = write_shapes_dataset(tmp_path / "shapes", num_train=3, num_val=1, image_size=(32, 32))
    ann_file = root / "annotations" / "instances_train.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = 77
    data["annotations"][1]["image_id"] = 999
    del data["images"][2]["height"]
    ann_file.write_text(json.dumps(data))
    splits = "{train_split: train, val_split: val}"
    recipe = _recipe(tmp_path, "detection", f"{{name: coco, root: {root}, options: {splits}}}")
    error, out, _ = _check([str(recipe), "--no-progress"], capsys)
    assert error == (
        f"kdforge check-data: error: {str(ann_file)!r}: 3 problem(s) (listed above); "
        "nothing was decoded"
    )
    assert "annotations[0] (id 1): category_id 77" in out
    assert "image_id 999 is not among the images" in out and "'height' must be" in out


def test_coco_images_are_decoded_and_dropped_boxes_noted(tmp_path, capsys) -> None:
    root = write_shapes_dataset(tmp_path / "shapes", num_train=3, num_val=2, image_size=(32, 32))
    ann_file = root / "annotations" / "instances_val.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["bbox"][2] = -4  # a negative width: dropped, noted
    ann_file.write_text(json.dumps(data))
    Image.new("RGB", (20, 20)).save(root / "val" / data["images"][1]["file_name"])
    splits = "{train_split: train, val_split: val}"
    recipe = _recipe(tmp_path, "detection", f"{{name: coco, root: {root}, options: {splits}}}")
    error, out, _ = _check([str(recipe), "--no-progress"], capsys)
    assert error is not None and "1 problem(s)" in error
    assert "is 20x20 but" in out and "says 32x32" in out
    assert "val: note: " in out and "dropped 1 of" in out
