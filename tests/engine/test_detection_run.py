"""A detection run end to end: COCO-format shapes data, a GFL student, COCO AP evaluation."""

import json

import pytest

from kdforge.config import load_config
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.build import build_trainer
from kdforge.engine.hooks import EvalHook


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, num_train=6, num_val=3, image_size=(96, 96), seed=0)
    return root


def test_detector_distils_on_fpn_levels_and_reports_coco_ap(shapes_root, tmp_path):
    overrides = [
        "task=detection",
        "data.name=coco",
        f"data.root={shapes_root}",
        "data.options={train_split: train, val_split: val, scale: [96, 96]}",
        "data.batch_size=2",
        "data.num_workers=0",
        "teacher.name=gfl_r18_fpn",
        "student.name=gfl_r18_fpn",
        "loss={detection: {}, hint: {type: fitnet, student_layer: neck.fpn_convs.0, "
        "teacher_layer: neck.fpn_convs.0, connector: none, weight: 1.0}}",
        "optim.lr=0.01",
        "optim.weight_decay=0.0001",
        "schedule.epochs=1",
        "train.max_steps=2",
        "train.check_teacher=false",
        f"train.out_dir={tmp_path}",
        "train.name=det",
        "train.log_every=1",
    ]
    trainer = build_trainer(load_config(None, overrides), "test")
    assert trainer.hook(EvalHook).metric == "AP"
    metrics = trainer.fit()
    assert {"AP", "AP50", "AP75"} <= set(metrics) and metrics["count"] == 3
    records = [
        json.loads(line) for line in (tmp_path / "det" / "log.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if r["kind"] == "train"]
    assert {"detection.cls", "detection.bbox", "detection.dfl", "hint"} <= set(train[-1])
    assert (tmp_path / "det" / "best.pt").exists()


def test_detection_needs_coco_data(shapes_root, tmp_path):
    cfg = load_config(
        None,
        [
            "task=detection",
            "student.name=gfl_r18_fpn",
            "loss={detection: {}}",
            f"train.out_dir={tmp_path}",
        ],
    )
    with pytest.raises(ValueError, match="data.name=coco"):
        build_trainer(cfg, "test")
