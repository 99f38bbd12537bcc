"""A hook of your own: log the student's gradient norm and keep its largest value.

A hook subclasses ``kdforge.engine.hooks.HookBase`` and overrides the events it needs
(``before_train``, ``before_epoch``, ``before_step``, ``after_forward``, ``after_step``,
``after_epoch``, ``after_train``); ``self.trainer`` gives it the trainer's state. Its
``state_dict`` is saved in ``last.pt``, so ``--resume`` restores it too.

From a recipe, name its class path (the module must be importable, e.g. on PYTHONPATH):

    train:
      hooks:
        - {type: custom_hook.GradNormHook, every: 5}

This script trains the digits demo's teacher/student pair for two epochs with the hook:

    python examples/custom_hook.py --out runs/custom_hook
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from kdforge.engine.hooks import HookBase


class GradNormHook(HookBase):
    """Log the global gradient norm of the student every ``every`` steps (``grad_norm``
    records in ``log.jsonl``) and keep the largest one seen in the run."""

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.largest = 0.0

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.iter % self.every:
            return
        grads = [p.grad for p in trainer.distiller.student.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        self.largest = max(self.largest, norm)
        trainer.logger.log("grad_norm", trainer.step, epoch=trainer.epoch, norm=norm)

    def after_epoch(self) -> None:
        self.trainer.logger.print(f"largest gradient norm so far: {self.largest:.3g}")

    def state_dict(self) -> dict[str, Any]:
        return {"largest": self.largest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.largest = state["largest"]


def main() -> None:
    from kdforge.config import load_config
    from kdforge.engine.build import build_trainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/custom_hook")
    parser.add_argument("--every", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [
        "data.name=digits",
        "data.root=null",
        "data.batch_size=32",
        "data.num_workers=0",
        "student.name=resnet8",
        "schedule.epochs=2",
        "schedule.name=cosine",
        f"train.out_dir={args.out}",
        "train.device=cpu",
        f"train.hooks=[{{type: {__name__}.GradNormHook, every: {args.every}}}]",
    ]
    trainer = build_trainer(load_config(None, overrides), recipe_name="custom_hook")
    metrics = trainer.fit()
    largest = trainer.hook(GradNormHook).largest
    assert math.isfinite(largest)
    print(f"top-1 {metrics['top1']:.2f}; largest gradient norm {largest:.3g}; {trainer.run_dir}")


if __name__ == "__main__":
    main()
