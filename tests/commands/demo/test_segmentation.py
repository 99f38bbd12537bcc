"""``kdforge demo --task segmentation``, shortened: one real run, the table, results, picture."""

from __future__ import annotations

import json
import math

import pytest

from kdforge.commands.demo.segmentation import (
    SEGMENTOR,
    format_table,
    run_segmentation_demo,
    segmentation_demo_overrides,
)
from kdforge.config import load_config
from kdforge.data.shapes import SEMANTIC_CLASSES
from kdforge.errors import DataError


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One epoch on 8 training images of 32 px: the whole path in a few seconds."""
    out = tmp_path_factory.mktemp("demo_segmentation")
    results = run_segmentation_demo(out, epochs=1, num_train=8, num_val=4, image_size=32)
    return out, results


def test_results_hold_miou_in_range(demo_dir):
    out, results = demo_dir
    assert json.loads((out / "results.json").read_text()) == results
    assert results["model"] == SEGMENTOR and results["epochs"] == 1 and results["params"] > 0
    final = results["final"]
    for metrics in (results["best"], final):
        assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["aAcc"] <= 100.0
    assert 0 < final["count"] <= 4 * 32 * 32  # labelled pixels of the 4 images
    iou = final["IoU"]
    assert list(iou) == list(SEMANTIC_CLASSES)
    present = [v for v in iou.values() if v is not None]  # None: class in neither
    assert math.isclose(sum(present) / len(present), final["mIoU"], abs_tol=1e-6)
    curves = results["curves"]
    assert curves["epoch"] == [1.0] and len(curves["step"]) == len(curves["decode"]) >= 1


def test_run_went_through_the_engine(demo_dir):
    out, results = demo_dir
    run = out / "segmentor"
    assert results["run_dir"] == str(run)
    for name in ("config.yaml", "log.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert (out / "shapes" / "masks" / "val" / "000001.png").is_file()
    cfg = load_config(run / "config.yaml")  # the saved config is a recipe
    assert cfg.task == "segmentation" and cfg.student.name == SEGMENTOR


def test_picture_and_table(demo_dir):
    out, results = demo_dir
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(results)
    assert SEGMENTOR in table and "best mIoU" in table and "ellipse" in table
    assert f"{results['seconds']:.0f}s" in table


def test_refuses_to_delete_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "segmentor").mkdir()
    with pytest.raises(DataError, match="not a kdforge run"):
        run_segmentation_demo(tmp_path, epochs=1)


def test_overrides_load_as_a_recipe(tmp_path):
    overrides = segmentation_demo_overrides(tmp_path / "shapes", tmp_path, 3, seed=1)
    cfg = load_config(None, overrides)
    assert cfg.schedule.epochs == 3 and cfg.train.seed == 1 and cfg.data.name == "segfolder"
    assert cfg.task == "segmentation" and cfg.schedule.name == "poly"
    assert list(cfg.data.options.classes) == list(SEMANTIC_CLASSES)


def test_overrides_with_a_teacher_make_a_kd_recipe(tmp_path):
    teacher = tmp_path / "teacher" / "best.pt"
    overrides = segmentation_demo_overrides(tmp_path / "shapes", tmp_path, teacher=teacher)
    cfg = load_config(None, [*overrides, "loss.cankd={student_layers: [backbone.layer4]}"])
    assert cfg.teacher.name == cfg.student.name == SEGMENTOR
    assert cfg.teacher.pretrained == str(teacher) and set(cfg.loss) == {"segmentation", "cankd"}
    assert load_config(None, segmentation_demo_overrides(tmp_path, tmp_path)).teacher.name is None
