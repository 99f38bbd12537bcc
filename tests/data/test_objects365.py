"""Objects365 v2 as mmdetection 3.x reads it: layout, the 365 names, the ignored images, and
missing images left out with one warning that counts them."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from kdforge.cli import main
from kdforge.data.bad_samples import DataWarning
from kdforge.data.objects365 import (
    OBJECTS365V2_CLASSES,
    OBJECTS365V2_IGNORED,
    Objects365V2,
    build_objects365v2_datasets,
    patch_file_name,
    write_objects365v2_dataset,
)
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.tasks import get_task
from kdforge.errors import DataError

# (index, name) of mmdetection's Objects365V2Dataset class list (mmdet/datasets/objects365.py)
MMDET_NAMES = [
    (0, "Person"),
    (3, "Other Shoes"),
    (37, "Moniter/TV"),
    (52, "Bakset"),
    (100, "Hanger"),
    (196, "Cigar/Cigarette "),
    (221, "Chicken"),
    (308, "Formula 1 "),
    (355, "Cosmetics Brush/Eyeliner Pencil"),
    (364, "Table Tennis "),
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_objects365v2_dataset(tmp_path_factory.mktemp("o365"), num_train=6, num_val=2)


@pytest.fixture
def root(clean: Path, tmp_path: Path) -> Path:
    """A copy of the generated data set that a test may damage."""
    return Path(shutil.copytree(clean, tmp_path / "o365"))


def _train(root: Path, **kwargs) -> Objects365V2:
    ann = root / "annotations" / "zhiyuan_objv2_train.json"
    return Objects365V2(root / "train", ann, **kwargs)


def test_the_class_list_is_mmdetections():
    assert len(OBJECTS365V2_CLASSES) == len(set(OBJECTS365V2_CLASSES)) == 365
    assert [(i, OBJECTS365V2_CLASSES[i]) for i, _ in MMDET_NAMES] == MMDET_NAMES


@pytest.mark.parametrize(
    ("listed", "read"),
    [
        ("images/v2/patch16/objects365_v2_00908726.jpg", "patch16/objects365_v2_00908726.jpg"),
        ("train/patch3/a.jpg", "patch3/a.jpg"),
        ("a.jpg", "a.jpg"),
    ],
)
def test_file_names_keep_the_patch_folder_and_the_file(listed: str, read: str):
    assert patch_file_name(listed) == read


def test_the_generated_layout_is_read_as_mmdetection_lays_it_out(clean: Path):
    assert sorted(p.name for p in (clean / "train").iterdir()) == ["patch0", "patch1"]
    listed = json.loads((clean / "annotations" / "zhiyuan_objv2_train.json").read_text())
    assert listed["images"][0]["file_name"] == "images/v2/patch0/objects365_v2_00000001.jpg"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # nothing missing: no warning
        train, val = build_objects365v2_datasets(clean, scale=(96, 96))
    assert (len(train), len(val)) == (6, 2)
    assert train.classes == list(OBJECTS365V2_CLASSES) and train.num_classes == 365
    assert train.images[1]["file_name"] == "patch1/objects365_v2_00000002.jpg"
    assert train.sample_file(1) == clean / "train" / "patch1" / "objects365_v2_00000002.jpg"
    image, target = train[0]
    assert image.shape[0] == 3 and len(target["labels"]) > 0
    # the shapes are categories 1, 101, 201 and 365: labels are the ids - 1
    labels = {int(v) for _, t in (train[i] for i in range(len(train))) for v in t["labels"]}
    assert labels <= {0, 100, 200, 364} and len(labels) > 1
    assert train.notes == [] and train.missing_images == []


def test_the_images_mmdetection_ignores_are_left_out_even_when_present(root: Path):
    folder = {name.split("/")[0] for name in OBJECTS365V2_IGNORED}
    for patch in folder:
        (root / "train" / patch).mkdir()
    for name in OBJECTS365V2_IGNORED:  # as if the download had them after all
        Image.new("RGB", (64, 48)).save(root / "train" / name)
    train = _train(root)
    names = {img["file_name"] for img in train.images}
    assert train.ignored_images == 3 and not names & OBJECTS365V2_IGNORED and len(train) == 6


def test_missing_images_are_left_out_with_one_warning_that_counts_them(root: Path):
    gone = ["patch1/objects365_v2_00000002.jpg", "patch0/objects365_v2_00000005.jpg"]
    for name in gone:
        (root / "train" / name).unlink()
    with pytest.warns(DataWarning) as record:
        train = _train(root)
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 image(s) listed in" in message and gone[0] in message
    assert sorted(train.missing_images) == sorted(gone) and len(train) == 4
    assert train.notes == [message]
    ids = {img["id"] for img in train.images}
    assert {2, 5}.isdisjoint(ids)
    for i in range(len(train)):  # no box of a left-out image remains
        assert train[i][1]["image_id"] in ids


def test_a_root_without_the_listed_images_is_an_error(root: Path, tmp_path: Path):
    with pytest.raises(DataError, match="none of the 9 images listed"):
        Objects365V2(tmp_path, root / "annotations" / "zhiyuan_objv2_train.json")
    with pytest.raises(DataError, match="does not exist. Expected Objects365 v2"):
        Objects365V2(tmp_path / "nowhere", root / "annotations" / "zhiyuan_objv2_train.json")


def test_other_class_names_are_refused(root: Path, tmp_path: Path):
    ann = root / "annotations" / "zhiyuan_objv2_train.json"
    data = json.loads(ann.read_text())
    data["categories"][196]["name"] = "Cigar/Cigarette"  # mmdetection's has a trailing space
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"label 196: 'Cigar/Cigarette' where mmdetection has"):
        _train(root)
    shapes = write_shapes_dataset(tmp_path / "shapes", num_train=1, num_val=0)
    with pytest.raises(DataError, match="its 4 categories"):
        Objects365V2(shapes / "train", shapes / "annotations" / "instances_train.json")


def test_the_detection_task_builds_it_by_name(clean: Path):
    from omegaconf import OmegaConf

    data = OmegaConf.create({"name": "objects365v2", "root": str(clean), "options": {}})
    train, val = get_task("detection").build_datasets(data)
    assert isinstance(train, Objects365V2) and isinstance(val, Objects365V2)


def test_check_data_notes_missing_images_and_lists_broken_ones(root: Path, tmp_path, capsys):
    (root / "val" / "patch1" / "objects365_v2_00000002.jpg").unlink()
    (root / "train" / "patch0" / "objects365_v2_00000003.jpg").write_bytes(b"")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"task: detection\nstudent: {{name: retinanet_r18_fpn}}\n"
        f"data: {{name: objects365v2, root: {root}}}\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["check-data", str(recipe), "--no-progress", "--workers", "2"])
    out = capsys.readouterr().out
    assert "1 problem(s) in the data" in str(exit_.value.code)
    assert "train: " in out and "objects365_v2_00000003.jpg" in out
    assert "val: note: 1 image(s) listed in" in out and "patch1/objects365_v2_00000002.jpg" in out
    assert "train: 6 samples, 1 problem(s); val: 1 samples, 0 problem(s)" in out
