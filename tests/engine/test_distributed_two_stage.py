"""A two-stage detector (and RepPoints, whose deformable convs and two-stage point targets
are its own) under 2-process DDP (gloo, CPU): RoI sampling runs per process on its own
seeded stream, every parameter gets its gradient, and the replicas stay in sync."""

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


HEAD_LOSSES = {
    "faster_rcnn_r18_fpn": ["detection.rpn_cls", "detection.cls", "detection.bbox"],
    "reppoints_moment_r18_fpn_gn": ["detection.cls", "detection.pts_init", "detection.pts_refine"],
}


@pytest.mark.parametrize("model", sorted(HEAD_LOSSES))
def test_detector_with_cankd_under_ddp(model, tmp_path):
    root = write_shapes_dataset(tmp_path / "shapes", num_train=4, num_val=2, image_size=(96, 96))
    script = tmp_path / "ddp_two_stage.py"
    script.write_text(SCRIPT)
    result_file = tmp_path / "result.json"
    fpn = [f"neck.fpn_convs.{i}" for i in range(4)]
    overrides = [
        "task=detection",
        "data.name=coco",
        f"data.root={root}",
        "data.options={train_split: train, val_split: val, scale: [96, 96]}",
        "data.batch_size=1",
        "data.num_workers=0",
        f"teacher.name={model}",
        "teacher.truncate=true",
        f"student.name={model}",
        f"loss={{detection: {{}}, cankd: {{student_layers: [{', '.join(fpn)}]}}}}",
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
    assert result["same_weights"]  # DDP averaged the RoI heads' gradients too
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]  # 4 images / 2 processes / batch 1
    keys = [*HEAD_LOSSES[model], *(f"cankd.{f}" for f in fpn)]
    for key in keys:
        assert all(math.isfinite(r[key]) for r in train), key
