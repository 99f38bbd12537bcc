"""``kdforge demo --task detection``, shortened: one real run, the table, results and curves."""

from __future__ import annotations

import json

import pytest

from kdforge.commands.demo.detection import (
    DETECTOR,
    detection_demo_overrides,
    format_table,
    run_detection_demo,
)
from kdforge.config import load_config
from kdforge.errors import DataError


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One epoch on 8 training images of 64 px: the whole path in a few seconds."""
    out = tmp_path_factory.mktemp("demo_detection")
    results = run_detection_demo(out, epochs=1, num_train=8, num_val=4, image_size=64)
    return out, results


def test_results_hold_coco_metrics_in_range(demo_dir):
    out, results = demo_dir
    assert json.loads((out / "results.json").read_text()) == results
    assert results["model"] == DETECTOR and results["epochs"] == 1 and results["params"] > 0
    for metrics in (results["best"], results["final"]):
        assert 0.0 <= metrics["AP"] <= metrics["AP50"] <= 1.0
    assert results["final"]["count"] == 4
    curves = results["curves"]
    assert curves["epoch"] == [1.0] and len(curves["step"]) == len(curves["loss"]) >= 1
    assert {"cls", "bbox", "dfl"} <= set(curves)


def test_run_went_through_the_engine(demo_dir):
    out, results = demo_dir
    run = out / "detector"
    assert results["run_dir"] == str(run)
    for name in ("config.yaml", "log.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert (out / "shapes" / "annotations" / "instances_val.json").is_file()
    cfg = load_config(run / "config.yaml")  # the saved config is a recipe
    assert cfg.task == "detection" and cfg.student.kwargs.fpn_channels == 64


def test_curves_png_and_table(demo_dir):
    out, results = demo_dir
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(results)
    assert DETECTOR in table and "best AP" in table and f"{results['seconds']:.0f}s" in table


def test_refuses_to_delete_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "detector").mkdir()
    with pytest.raises(DataError, match="not a kdforge run"):
        run_detection_demo(tmp_path, epochs=1)


def test_overrides_load_as_a_recipe(tmp_path):
    cfg = load_config(None, detection_demo_overrides(tmp_path / "shapes", tmp_path, 3, seed=1))
    assert cfg.schedule.epochs == 3 and cfg.train.seed == 1 and cfg.data.name == "coco"
    assert cfg.student.kwargs.frozen_stages == -1 and cfg.student.kwargs.norm_eval is False


def test_overrides_with_a_teacher_make_a_kd_recipe(tmp_path):
    teacher = tmp_path / "teacher" / "best.pt"
    overrides = detection_demo_overrides(tmp_path / "shapes", tmp_path, teacher=teacher)
    cfg = load_config(None, [*overrides, "loss.cankd={student_layers: [neck.fpn_convs.0]}"])
    assert cfg.teacher.name == cfg.student.name == DETECTOR
    assert cfg.teacher.pretrained == str(teacher) and cfg.teacher.kwargs == cfg.student.kwargs
    assert set(cfg.loss) == {"detection", "cankd"}
    assert load_config(None, detection_demo_overrides(tmp_path, tmp_path)).teacher.name is None
