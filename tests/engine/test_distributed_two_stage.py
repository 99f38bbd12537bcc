"""Detectors with CanKD under 2-process DDP (gloo, CPU): a two-stage one (RoI sampling per
process on its own seeded stream), RepPoints (deformable convs, two-stage point targets), a
Swin RetinaNet and a small DINO (denoising queries, CanKD on its channel mapper): every
parameter gets its gradient, every loss is finite, and the replicas stay in sync."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from kdforge.data.shapes import write_shapes_dataset

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from kdforge.config import load_config
    from kdforge.engine.build import build_trainer

    trainer = build_trainer(load_config(None, sys.argv[2:]), "ddp")
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    metrics = trainer.fit()
    student = trainer.distiller.student
    flat = torch.cat([p.detach().flatten() for p in student.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], g) for g in gathered)
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"metrics": metrics, "same_weights": same}, f)
    dist.barrier()
    dist.destroy_process_group()
    """
)


FPN = [f"neck.fpn_convs.{i}" for i in range(4)]
# model: (head losses, CanKD's tapped layers, teacher and student kwargs)
MODELS = {
    "faster_rcnn_r18_fpn": (["detection.rpn_cls", "detection.cls", "detection.bbox"], FPN, "{}"),
    "reppoints_moment_r18_fpn_gn": (
        ["detection.cls", "detection.pts_init", "detection.pts_refine"],
        FPN,
        "{}",
    ),
    "retinanet_swin_t_fpn": (
        ["detection.cls", "detection.bbox"],
        FPN,
        "{fpn_channels: 64, feat_channels: 64, stacked_convs: 1}",
    ),
    "dino_4scale_r18": (
        ["detection.cls", "detection.dn_loss_bbox", "detection.enc_loss_iou"],
        [f"neck.convs.{i}" for i in range(3)],
        "{num_queries: 30, embed_dims: 64, num_encoder_layers: 2, num_decoder_layers: 2, "
        "feedforward_channels: 128, num_dn_queries: 10}",
    ),
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_detector_with_cankd_under_ddp(model, tmp_path):
    root = write_shapes_dataset(tmp_path / "shapes", num_train=4, num_val=2, image_size=(96, 96))
    script = tmp_path / "ddp_two_stage.py"
    script.write_text(SCRIPT)
    result_file = tmp_path / "result.json"
    losses, layers, kwargs = MODELS[model]
    overrides = [
        "task=detection",
        "data.name=coco",
        f"data.root={root}",
        "data.options={train_split: train, val_split: val, scale: [96, 96]}",
        "data.batch_size=1",
        "data.num_workers=0",
        f"teacher.name={model}",
        "teacher.truncate=true",
        f"teacher.kwargs={kwargs}",
        f"student.name={model}",
        f"student.kwargs={kwargs}",
        f"loss={{detection: {{}}, cankd: {{student_layers: [{', '.join(layers)}]}}}}",
        "optim.lr=0.001",
        "schedule.epochs=1",
        "train.check_teacher=false",
        "train.device=cpu",
        "train.max_eval_batches=1",
        f"train.out_dir={tmp_path}",
        "train.name=run",
        "train.log_every=1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(script), str(result_file), *overrides,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["same_weights"]  # DDP averaged every head's gradients
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]  # 4 images / 2 processes / batch 1
    keys = [*losses, *(f"cankd.{f}" for f in layers)]
    for key in keys:
        assert all(math.isfinite(r[key]) for r in train), key
