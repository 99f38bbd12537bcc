"""``kdforge eval``: the validation metrics of a checkpoint."""

from __future__ import annotations

import argparse

from kdforge.commands._args import add_overrides, add_role

HELP = "evaluate a checkpoint on the validation set"
DESCRIPTION = (
    "The student's (or teacher's) validation metrics: top-1/top-5, COCO box AP or mIoU, "
    "by the recipe's task."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML or shipped recipe name (kdforge recipes)")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a kdforge run checkpoint (.pt), an export (.safetensors) or any weights file "
        "the model loads",
    )
    add_role(parser)
    add_overrides(parser)


def run(args: argparse.Namespace) -> None:
    from kdforge.analysis.loading import load_model, validation_loader
    from kdforge.config import load_config
    from kdforge.engine.tasks import get_task

    cfg = load_config(args.config, args.overrides)
    task = get_task(cfg.task)
    val_loader, device = validation_loader(cfg)
    model = load_model(cfg, args.model, args.checkpoint, val_loader.dataset.num_classes)
    metrics = task.evaluate(model.to(device), val_loader, device, None, cfg.train.max_eval_batches)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    name = cfg[args.model].name
    print(f"{name} ({args.checkpoint}) on {metrics['count']} {task.counted}: {shown}")
    if isinstance(metrics.get("table"), str):  # segmentation: the per-class IoU table
        print(metrics["table"])
