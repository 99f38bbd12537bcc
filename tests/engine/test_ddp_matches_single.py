"""Two processes (gloo, CPU) with batch B each train exactly as one process with batch 2B.

Agreement between the two processes is not enough: a sampler that gave both processes the
same images, or gradients summed instead of averaged, keeps them in agreement. Here the
weights after a few steps are compared with a single-process run on the same global
batches.

Why the global batches are the same: ``build_data`` gives every process a
``DistributedSampler`` seeded with ``train.seed`` (shuffled by ``seed + epoch``); with
``R`` replicas, process ``r`` takes positions ``r, r + R, ...`` of one shared permutation,
so step ``k`` of the two processes together covers positions ``[2kB, 2(k+1)B)``, which is
step ``k`` of the single process with batch ``2B`` over the same permutation. The digits
data set has no random augmentation (the processes seed their streams by rank), and the
student has no BatchNorm (its batch statistics would be per process; SyncBatchNorm needs
a GPU); the teacher's BatchNorm runs in eval mode, image by image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from kdforge.config import load_config
    from kdforge.engine.build import build_trainer
    from kdforge.models import register_model

    @register_model("tiny_nobn", input_size=(3, 16, 16), family="cifar", num_classes=10)
    def tiny_nobn(num_classes=10):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
        )

    out = sys.argv[1]
    trainer = build_trainer(load_config(None, sys.argv[2:]), "ddp")
    samples = []
    trainer.distiller.register_forward_pre_hook(
        lambda module, args: samples.append(args[1].tolist())
    )
    start = {k: v.clone() for k, v in trainer.distiller.student.state_dict().items()}
    trainer.fit()
    world = dist.get_world_size() if dist.is_initialized() else 1
    labels = [samples]
    if world > 1:
        labels = [None] * world
        dist.all_gather_object(labels, samples)
    if trainer.dist.is_main:
        torch.save({"start": start, "end": trainer.distiller.student.state_dict(),
                    "labels": labels, "world": world, "steps": trainer.step}, out)
    if world > 1:
        dist.barrier()  # nobody tears gloo down while a peer still talks
        dist.destroy_process_group()
    """
)

STEPS = 4
B = 8


def _overrides(tmp_path, name: str, batch: int) -> list[str]:
    return [
        "data.name=digits",
        "data.options={size: 16}",
        f"data.batch_size={batch}",
        "data.num_workers=0",
        "teacher.name=resnet8",
        "teacher.pretrained=null",
        "student.name=tiny_nobn",
        "loss={ce: {weight: 0.5}, kd: {weight: 0.5, temperature: 4.0}}",
        "optim.lr=0.2",
        "optim.momentum=0.9",
        "schedule.epochs=1",
        "schedule.name=constant",
        f"train.max_steps={STEPS}",
        "train.max_eval_batches=1",
        "train.check_teacher=false",
        "train.device=cpu",
        "train.seed=3",
        f"train.out_dir={tmp_path}",
        f"train.name={name}",
    ]


def _run(tmp_path, processes: int, batch: int, name: str) -> dict:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    result = tmp_path / f"{name}.pt"
    if processes > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
        ]
    else:
        launch = [sys.executable]
    cmd = [*launch, str(script), str(result), *_overrides(tmp_path, name, batch)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(result, weights_only=False)


def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    ddp = _run(tmp_path, 2, B, "ddp")
    single = _run(tmp_path, 1, 2 * B, "single")
    assert (ddp["world"], single["world"]) == (2, 1)
    assert ddp["steps"] == single["steps"] == STEPS
    # the same images per step: each process half of the single process's batch
    rank0, rank1 = ddp["labels"]
    (one,) = single["labels"]
    assert len(rank0) == len(rank1) == len(one) == STEPS
    for k in range(STEPS):
        assert len(rank0[k]) == len(rank1[k]) == B and len(one[k]) == 2 * B
        interleaved = [y for pair in zip(rank0[k], rank1[k], strict=True) for y in pair]
        assert interleaved == one[k]  # process r holds positions r, r + 2, ... of the batch
    assert rank0 != rank1  # different images on the two processes
    # the same start, and the same weights after training (up to summation order)
    for key, value in single["start"].items():
        assert torch.equal(ddp["start"][key], value), key
    moved = max((single["end"][k] - single["start"][k]).abs().max() for k in single["end"])
    assert moved > 1e-2  # the weights did change: the comparison below means something
    assert ddp["end"].keys() == single["end"].keys()
    for key, value in single["end"].items():
        torch.testing.assert_close(ddp["end"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    log = tmp_path / "ddp" / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["kind"] for r in records if r["kind"] == "val"] == ["val"]
