"""Loss normalisers are averaged over processes (mmdetection's reduce_mean), even when one
process has no positives: two gloo processes under torchrun, no deadlock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from kdforge.models.detection import ATSSHead, FCOSHead, GFLHead, RetinaHead

    def losses():
        out = {}
        torch.manual_seed(0)
        feats = [torch.randn(1, 16, s, s) for s in (8, 4, 2, 1, 1)]
        box = torch.tensor([[8.0, 8.0, 40.0, 36.0]])
        with_box = [{"boxes": box, "labels": torch.tensor([1])}]
        empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
        rank = dist.get_rank() if dist.is_initialized() else 0
        for cls in (RetinaHead, FCOSHead, ATSSHead, GFLHead):
            torch.manual_seed(0)
            extra = {} if cls is RetinaHead else {"norm_groups": 4}
            head = cls(3, in_channels=16, feat_channels=16, stacked_convs=2, **extra)
            targets = with_box if rank == 0 else empty
            out[cls.__name__] = {
                k: v.item() for k, v in head.loss(head(feats), targets, (64, 64)).items()
            }
        return out

    local = losses()
    dist.init_process_group("gloo")
    shared = losses()
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"local": local, "shared": shared}, f)
    dist.destroy_process_group()
    """
)


def test_normalisers_are_averaged_over_processes(tmp_path) -> None:
    script = tmp_path / "losses.py"
    script.write_text(SCRIPT)
    result_file = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(result_file),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    local, shared = result["local"], result["shared"]
    # RetinaNet does not reduce; FCOS/ATSS/GFL divide by the mean over both processes
    assert shared["RetinaHead"] == local["RetinaHead"]
    for head in ("FCOSHead", "ATSSHead", "GFLHead"):
        assert shared[head]["loss_cls"] > local[head]["loss_cls"] * 1.5, head
