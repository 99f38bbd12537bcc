"""``kdforge demo``: small real runs on CPU, one module per task.

:mod:`.classification` distils on the digits data set; :mod:`.detection` and
:mod:`.segmentation` train a detector and a segmentor on generated shapes; :mod:`.runs`
holds what they (and ``benchmarks/shapes_kd.py``) share.
"""

from __future__ import annotations

import argparse

HELP = "a small real distillation on CPU (digits data set)"
DESCRIPTION = (
    "Train a teacher, a student alone and a KD student on scikit-learn's handwritten digits; "
    "print a table and draw the curves. With --task detection: train a small GFL detector on "
    "generated shapes and report its COCO AP; with --task segmentation: a PSPNet on generated "
    "shapes, its mIoU."
)

# task -> (module, function, default output folder)
DEMOS = {
    "classification": ("kdforge.commands.demo.classification", "run_demo", "runs/demo"),
    "detection": ("kdforge.commands.demo.detection", "run_detection_demo", "runs/demo_detection"),
    "segmentation": (
        "kdforge.commands.demo.segmentation",
        "run_segmentation_demo",
        "runs/demo_segmentation",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=list(DEMOS), default="classification")
    parser.add_argument(
        "--out", default=None, help="folder for the results (runs/demo, runs/demo_<task>)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per model (default: demo's)"
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    import importlib

    module, function, out = DEMOS[args.task]
    demo = getattr(importlib.import_module(module), function)
    demo(out_dir=args.out or out, epochs=args.epochs, seed=args.seed)
