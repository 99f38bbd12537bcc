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
    from kdforge.losses import TERMS, LossTerm

    class Critic(LossTerm):  # an auxiliary parameter outside DDP's sync, like CAKD's D
        needs_teacher = False

        def __init__(self, weight=1.0):
            super().__init__(weight)
            self.critic = torch.nn.Linear(10, 1)

        def auxiliary_parameters(self):
            return list(self.critic.parameters())

        def forward(self, batch):
            self.auxiliary_loss = self.critic(batch.student_output.detach()).pow(2).mean()
            return 0.0 * batch.student_output.sum()

    TERMS["critic"] = Critic
    trainer = build_trainer(load_config(None, sys.argv[2:]), "ddp")
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    wrapped = {id(p) for p in trainer.model.parameters()}
    teacher = {id(p) for p in trainer.distiller.teacher.parameters()}
    critic = {id(p) for p in trainer.distiller.terms["critic"].parameters()}
    assert wrapped and not wrapped & (teacher | critic)  # DDP holds student + connectors only
    metrics = trainer.fit()
    params = [*trainer.distiller.student.parameters(), *trainer.distiller.terms.parameters()]
    flat = torch.cat([p.detach().flatten() for p in params])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], g) for g in gathered)
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"metrics": metrics, "same_weights": same,
                       "world": dist.get_world_size(),
                       "train_batches": len(trainer.train_loader)}, f)
    dist.barrier()  # nobody tears gloo down while a peer still talks
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
        "loss={ce: {weight: 0.1}, kd: {weight: 0.9}, critic: {}}",
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
    assert result["same_weights"]  # DDP (and the auxiliary all-reduce) kept replicas in sync
    assert result["train_batches"] == 3  # 48 images / 2 processes / batch 8
    assert result["metrics"]["count"] == 24  # sharded evaluation covers the whole val set once
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["kind"] == "val"] == [1, 2]  # written once, by rank 0
