"""Two processes on CPU with the gloo backend under torchrun: the real multi-GPU code path."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from kdforge.config import load_config
    from kdforge.engine.build import build_trainer

    trainer = build_trainer(load_config(None, sys.argv[2:]), "ddp")
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    metrics = trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.distiller.student.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], g) for g in gathered)
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"metrics": metrics, "same_weights": same,
                       "world": dist.get_world_size(),
                       "train_batches": len(trainer.train_loader)}, f)
    dist.destroy_process_group()
    """
)


def test_ddp_two_processes_gloo(tiny_overrides, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    result_file = tmp_path / "result.json"
    overrides = [
        *tiny_overrides,
        "teacher.name=resnet8",
        "student.name=resnet8",
        "loss={ce: {weight: 0.1}, kd: {weight: 0.9}}",
        "schedule.epochs=2",
        "train.device=cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(result_file),
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["world"] == 2
    assert result["same_weights"]  # DDP kept the replicas in sync
    assert result["train_batches"] == 3  # 48 images / 2 processes / batch 8
    assert result["metrics"]["count"] == 24  # sharded evaluation covers the whole val set once
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["kind"] == "val"] == [1, 2]  # written once, by rank 0
