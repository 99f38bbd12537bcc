"""A segmentation run end to end: generated masks, a PSPNet student, mIoU evaluation."""

import json

import pytest

from kdforge.cli import main
from kdforge.config import load_config
from kdforge.data.shapes import SEMANTIC_CLASSES, write_shapes_dataset
from kdforge.engine.build import build_trainer
from kdforge.engine.hooks import EvalHook
from kdforge.errors import ConfigError


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_seg")
    write_shapes_dataset(root, num_train=4, num_val=2, image_size=(64, 64), seed=0)
    return root


def test_segmentor_distils_backbone_features_and_reports_miou(shapes_root, tmp_path, capsys):
    classes = "[" + ", ".join(SEMANTIC_CLASSES) + "]"
    overrides = [
        "task=segmentation",
        "data.name=segfolder",
        f"data.root={shapes_root}",
        f"data.options={{classes: {classes}, image_dir: '{{split}}', "
        "mask_dir: 'masks/{split}', crop_size: [48, 48], scale: [64, 64]}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.eval_batch_size=1",
        "teacher.name=pspnet_r18",
        "student.name=pspnet_r18",
        "loss={segmentation: {}, hint: {type: fitnet, student_layer: backbone.layer4, "
        "teacher_layer: backbone.layer4, connector: none, weight: 1.0}}",
        "optim.lr=0.01",
        "schedule.name=poly",
        "schedule.iters=2",
        "schedule.min_lr=0.0001",
        "train.check_teacher=false",
        f"train.out_dir={tmp_path}",
        "train.name=seg",
        "train.log_every=1",
    ]
    trainer = build_trainer(load_config(None, overrides), "test")
    assert trainer.hook(EvalHook).metric == "mIoU"
    metrics = trainer.fit()
    assert 0 <= metrics["mIoU"] <= 100 and "IoU" in metrics["table"]
    records = [json.loads(x) for x in (tmp_path / "seg" / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {"segmentation.decode", "segmentation.aux", "hint"} <= set(train[-1])
    assert train[-1]["step"] == 2
    # kdforge eval reads the run's checkpoint and reports the same mIoU
    capsys.readouterr()
    run = tmp_path / "seg"
    main(["eval", str(run / "config.yaml"), "--checkpoint", str(run / "best.pt")])
    printed = capsys.readouterr().out
    assert f"on {metrics['count']} labelled pixels: mIoU {metrics['mIoU']:.4g}" in printed
    assert metrics["table"] in printed  # the per-class IoU table


def test_teacher_with_no_skill_is_refused(shapes_root, tmp_path):
    classes = "[" + ", ".join(SEMANTIC_CLASSES) + "]"
    cfg = load_config(
        None,
        [
            "task=segmentation",
            "data.name=segfolder",
            f"data.root={shapes_root}",
            f"data.options={{classes: {classes}, image_dir: '{{split}}', "
            "mask_dir: 'masks/{split}', crop_size: [48, 48], scale: [64, 64]}",
            "data.num_workers=0",
            "teacher.name=pspnet_r18",
            "student.name=pspnet_r18",
            "loss={segmentation: {}, hint: {type: fitnet, student_layer: backbone.layer4, "
            "teacher_layer: backbone.layer4, connector: none}}",
            f"train.out_dir={tmp_path}",
        ],
    )
    trainer = build_trainer(cfg, "test")
    with pytest.raises(ConfigError, match="mIoU"):
        trainer.fit()  # the teacher is checked before the first step
