"""The confusion matrix and feature maps on every detector family's post-processing and taps:
two-stage (with masks), RepPoints, Swin, DINO and Grounding DINO, each made tiny."""

from __future__ import annotations

import csv

import pytest

from kdforge.analysis.confusion import run_confusion_matrix
from kdforge.analysis.features import visualize_features
from kdforge.data.shapes import SHAPE_CLASSES

_RCNN = "fpn_channels: 32, fc_out_channels: 32, frozen_stages: -1"
_DETR = (
    "num_queries: 30, embed_dims: 64, num_encoder_layers: 1, num_decoder_layers: 1, "
    "feedforward_channels: 64, num_dn_queries: 10"
)
KWARGS = {
    "faster_rcnn_r18_fpn": _RCNN,
    "cascade_mask_rcnn_r18_fpn": f"{_RCNN}, mask_channels: 32, max_per_img: 10",
    # 64 FPN channels: GroupNorm's 32 groups need more than one value on P7's 1x1 map
    "reppoints_moment_r18_fpn_gn": "fpn_channels: 64, feat_channels: 64, "
    "point_feat_channels: 32, stacked_convs: 1",
    "retinanet_swin_t_fpn": "fpn_channels: 32, feat_channels: 32, stacked_convs: 1",
    "dino_4scale_r18": _DETR,
    "grounding_dino_r18": f"{_DETR}, text_feedforward_channels: 64, fusion_embed_dim: 64, "
    f"num_cp: 0, class_names: [{', '.join(SHAPE_CLASSES)}]",
}


@pytest.mark.parametrize("model", sorted(KWARGS))
def test_confusion_and_features(model, shapes_root, tmp_path, check_png, request):
    kwargs = KWARGS[model]
    if model.startswith("grounding"):
        kwargs += f", text_folder: {request.getfixturevalue('tiny_bert')}"
    overrides = [
        "task=detection",
        "data.name=coco",
        f"data.root={shapes_root}",
        "data.options={train_split: train, val_split: val, scale: [64, 64]}",
        "data.batch_size=2",
        "data.num_workers=0",
        "train.device=cpu",
        f"train.out_dir={tmp_path}",
        *(f"{role}.name={model}" for role in ("teacher", "student")),
        *(f"{role}.kwargs={{{kwargs}}}" for role in ("teacher", "student")),
        "loss={detection: {}}",
    ]
    png, table, _ = run_confusion_matrix(
        None, None, tmp_path / "cm", score_thr=0.0, overrides=overrides
    )
    check_png(png, 300, 300)
    rows = list(csv.reader(table.open()))
    assert rows[0][1:] == [*SHAPE_CLASSES, "background"] and len(rows) == 6
    assert sum(int(v) for row in rows[1:] for v in row[1:]) > 0  # the boxes were counted
    image = shapes_root / "val" / "000001.png"
    (features,) = visualize_features(None, None, [image], tmp_path / "f", None, "l2", overrides)
    check_png(features, 800, 4 * 250)  # four or five FPN levels, teacher and student
