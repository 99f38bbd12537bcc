"""The ``kdforge`` command: a thin dispatcher over :mod:`kdforge.commands`, a module per verb.

Errors a user can fix (:class:`kdforge.errors.KdforgeError`) end the command with a one-line
message; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["COMMANDS", "build_parser", "main"]

# verb -> module following the protocol of kdforge.commands (HELP, add_arguments, run)
COMMANDS = {
    "train": "kdforge.commands.train",
    "eval": "kdforge.commands.eval",
    "export": "kdforge.commands.export",
    "probe": "kdforge.commands.probe",
    "convert": "kdforge.commands.convert",
    "cityscapes-trainids": "kdforge.commands.cityscapes_trainids",
    "visualize": "kdforge.commands.visualize",
    "confusion-matrix": "kdforge.commands.confusion",
    "robustness": "kdforge.commands.robustness",
    "compare": "kdforge.commands.compare",
    "demo": "kdforge.commands.demo",
    "bench": "kdforge.commands.bench",
    "cache-teacher": "kdforge.commands.cache_teacher",
    "check-data": "kdforge.commands.check_data",
    "weights": "kdforge.commands.weights",
    "recipes": "kdforge.commands.recipes",
}

EXAMPLES = """examples:
  kdforge recipes cifar100/kd
  kdforge train cifar100/kd/resnet32x4_resnet8x4 --set data.root=~/data
  torchrun --nproc_per_node 4 -m kdforge train RECIPE.yaml
  kdforge train --resume runs/resnet32x4_resnet8x4-20261121-101500
  kdforge check-data RECIPE.yaml --set data.root=~/data
  kdforge eval RECIPE.yaml --checkpoint runs/.../best.pt
  kdforge export runs/... --out student.safetensors
  kdforge export runs/... --out student.onnx --format onnx
  kdforge probe --teacher resnet32x4 --student resnet8x4
  kdforge visualize features RECIPE.yaml --checkpoint runs/.../best.pt --images a.png
  kdforge confusion-matrix RECIPE.yaml --checkpoint runs/.../best.pt
  kdforge robustness RECIPE.yaml --checkpoint runs/.../best.pt --max-batches 5
  kdforge compare runs/baseline runs/kd
  kdforge demo
  kdforge demo --task detection
  kdforge demo --task segmentation
  kdforge weights fetch --recipe RECIPE.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb, each declared by its command module."""
    parser = argparse.ArgumentParser(
        prog="kdforge",
        description="Knowledge distillation in plain PyTorch.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb, path in COMMANDS.items():
        module = importlib.import_module(path)
        description = getattr(module, "DESCRIPTION", module.HELP)
        module.add_arguments(verbs.add_parser(verb, help=module.HELP, description=description))
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``kdforge`` command (and ``python -m kdforge``)."""
    args = build_parser().parse_args(argv)
    from kdforge.errors import KdforgeError

    try:
        importlib.import_module(COMMANDS[args.command]).run(args)
    except KdforgeError as err:
        raise SystemExit(f"kdforge {args.command}: error: {err}") from None
