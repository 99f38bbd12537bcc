"""``kdforge export``: the student of a run as .safetensors or ONNX."""

from __future__ import annotations

import argparse

HELP = "write the student of a run as .safetensors or ONNX"
DESCRIPTION = (
    "Student weights only (connectors dropped); load them with "
    "kdforge.create_model(name, pretrained=OUT). --format onnx writes the graph of a "
    "classification or segmentation student (dynamic batch) and checks it against PyTorch "
    "with onnxruntime (pip install 'kdforge[onnx]')."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run folder (or a checkpoint file)")
    parser.add_argument("--out", required=True, help="output .safetensors or .onnx path")
    parser.add_argument("--which", choices=["best", "last"], default="best")
    parser.add_argument(
        "--format",
        choices=["safetensors", "onnx"],
        help="default: onnx for an --out ending in .onnx, else safetensors",
    )
    parser.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        metavar=("C", "H", "W"),
        help="ONNX input size (default: the model's own, e.g. 3 32 32 for CIFAR)",
    )


def run(args: argparse.Namespace) -> None:
    from kdforge.engine.export import export_onnx, export_student

    if args.format == "onnx" or (args.format is None and args.out.endswith(".onnx")):
        out, error = export_onnx(args.run_dir, args.out, args.which, args.input_size)
        print(f"wrote {out} (onnxruntime matches PyTorch: max abs difference {error:.2g})")
    else:
        print(f"wrote {export_student(args.run_dir, args.out, args.which)}")
