"""A detector prompted by class names (Grounding DINO) gets the data set's names in order."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config
from kdforge.data.shapes import SHAPE_CLASSES, write_shapes_dataset
from kdforge.engine.build import build_trainer
from kdforge.engine.class_names import check_class_names
from kdforge.errors import ConfigError

NLKD = (
    Path(__file__).resolve().parents[2]
    / "kdforge/recipes/coco/cankd/nlkd_ggdino-r101_ggdino-r50_1x_coco.yaml"
)


def _cfg(student: list[str] | None, teacher: list[str] | None = None):
    def role(names):
        return {"name": "m" if names else None, "kwargs": {"class_names": names} if names else {}}

    return OmegaConf.create({"student": role(student), "teacher": role(teacher)})


def test_the_first_difference_is_named():
    data = ["cat", "dog", "bird"]
    check_class_names(_cfg(["cat", "dog", "bird"], ["cat", "dog", "bird"]), data)
    check_class_names(_cfg(None), data)  # a model without class_names
    check_class_names(_cfg(["anything"]), None)  # data without names
    with pytest.raises(ConfigError, match=r"student.kwargs.class_names\[1\] is 'bird' but the "
                       r"data set's class 1 is 'dog'"):  # fmt: skip
        check_class_names(_cfg(["cat", "bird", "dog"]), data)
    with pytest.raises(ConfigError, match="teacher.kwargs.class_names has 2 names but the data "
                       "set has 3 classes"):  # fmt: skip
        check_class_names(_cfg(data, ["cat", "dog"]), data)
    with pytest.raises(ConfigError, match="has 4 names but the data set has 3"):
        check_class_names(_cfg([*data, "fish"]), data)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(root, num_train=2, num_val=2, image_size=(64, 64))


def test_a_recipe_naming_other_classes_stops_before_the_models(shapes_root: Path, tmp_path):
    """The CanKD Grounding DINO recipe names COCO's 80 classes; on the shapes data the build
    stops at the first mismatch, before any model (or BERT folder) is read."""
    shapes = "[" + ",".join(SHAPE_CLASSES) + "]"
    swapped = "[" + ",".join([SHAPE_CLASSES[1], SHAPE_CLASSES[0], *SHAPE_CLASSES[2:]]) + "]"
    base = [
        f"data.root={shapes_root}",
        "data.options.train_split=train",
        "data.options.val_split=val",
        "data.num_workers=0",
        f"train.out_dir={tmp_path}",
        "train.name=run",
    ]
    cases = [
        ([], r"student.kwargs.class_names\[0\] is 'person' but the data set's class 0 is "
             f"'{SHAPE_CLASSES[0]}'"),
        ([f"student.kwargs.class_names={shapes}"], r"teacher.kwargs.class_names\[0\] is 'person'"),
        ([f"student.kwargs.class_names={swapped}", f"teacher.kwargs.class_names={shapes}"],
         rf"student.kwargs.class_names\[0\] is '{SHAPE_CLASSES[1]}'"),
    ]  # fmt: skip
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_trainer(load_config(NLKD, base + extra), "test")
    assert not (tmp_path / "run").exists()  # a failed build leaves no run folder
