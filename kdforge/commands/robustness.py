"""``kdforge robustness``: the metric under 15 corruptions x 5 severities."""

from __future__ import annotations

import argparse

from kdforge.commands._args import add_overrides, add_role

HELP = "the metric under 15 corruptions x 5 severities (ImageNet-C / COCO-C)"
DESCRIPTION = (
    "Evaluate on the validation set corrupted on the fly (deterministic per seed and image) "
    "and report each corruption and severity, mPC (their mean) and rPC (mPC / clean) as a "
    "table, CSV and PNG."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML or shipped recipe name (kdforge recipes)")
    parser.add_argument("--checkpoint", help="weights of --model: run checkpoint or export")
    add_role(parser)
    parser.add_argument("--out", default="robustness", help="output folder")
    parser.add_argument(
        "--corruptions", nargs="+", metavar="NAME", help="a subset (default all 15)"
    )
    parser.add_argument(
        "--severities", nargs="+", type=int, metavar="S", help="a subset of 1..5 (default all)"
    )
    parser.add_argument("--max-batches", type=int, help="only the first batches of each evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    add_overrides(parser)


def run(args: argparse.Namespace) -> None:
    from kdforge.analysis.robustness import format_robustness, run_robustness

    result, csv, png = run_robustness(
        args.config,
        args.checkpoint,
        args.out,
        args.corruptions,
        args.severities,
        args.max_batches,
        args.model,
        args.seed,
        args.overrides,
    )
    print(format_robustness(result))
    print(f"wrote {csv}\nwrote {png}")
