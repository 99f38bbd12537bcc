"""``kdforge confusion-matrix``: the confusion matrix on the validation set (PNG and CSV)."""

from __future__ import annotations

import argparse

from kdforge.commands._args import add_overrides, add_role

HELP = "the confusion matrix on the validation set (PNG and CSV)"
DESCRIPTION = (
    "Rows true class, columns predicted: images (classification), labelled pixels "
    "(segmentation), or boxes by mmdetection's rules (detection: score >= 0.3, IoU >= 0.5, "
    "plus a background row and column). The PNG is normalised per row."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML or shipped recipe name (kdforge recipes)")
    parser.add_argument("--checkpoint", help="weights of --model: run checkpoint or export")
    add_role(parser)
    parser.add_argument("--out", default="confusion", help="output folder")
    parser.add_argument("--top-k", type=int, default=10, help="most confused pairs to list")
    parser.add_argument("--score-thr", type=float, default=0.3, help="detection score threshold")
    parser.add_argument("--iou-thr", type=float, default=0.5, help="detection IoU to match")
    parser.add_argument("--max-batches", type=int, help="only the first batches (quick checks)")
    add_overrides(parser)


def run(args: argparse.Namespace) -> None:
    from kdforge.analysis.confusion import run_confusion_matrix

    png, csv, pairs = run_confusion_matrix(
        args.config,
        args.checkpoint,
        args.out,
        args.model,
        args.top_k,
        args.score_thr,
        args.iou_thr,
        args.max_batches,
        args.overrides,
    )
    if pairs:
        print(f"most confused (true -> predicted), top {args.top_k}:")
        for true, predicted, count, share in pairs:
            print(f"  {true} -> {predicted}: {count} ({share:.1%} of {true})")
    print(f"wrote {png}\nwrote {csv}")
