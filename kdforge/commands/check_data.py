"""``kdforge check-data``: decode every image of a recipe's data and report every problem."""

from __future__ import annotations

import argparse
import os
import warnings

from kdforge.commands._args import add_overrides

HELP = "decode every image of a recipe's data sets and list every problem"
DESCRIPTION = (
    "Build the recipe's data sets, decode every image (and mask) and check it as training "
    "would: unreadable, empty, truncated or mislabelled files, image/mask size mismatches, "
    "mask ids outside the classes, COCO entries that do not fit. Prints one line per problem "
    "and a summary per split; exits with status 1 if any problem was found."
)
SPLITS = ("train", "val")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML or shipped recipe name (kdforge recipes)")
    parser.add_argument(
        "--split", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to check"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding threads (default: CPUs, at most 8)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides(parser)


def run(args: argparse.Namespace) -> None:
    from kdforge.config import load_config
    from kdforge.data.bad_samples import DataProblems, DataWarning
    from kdforge.data.check import check_dataset
    from kdforge.engine.tasks import get_task
    from kdforge.errors import DataError

    # skip: pairs found bad from their headers do not stop the build; decoding lists them
    cfg = load_config(args.config, [*args.overrides, "data.on_bad_sample=skip"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the checks below report each file
        try:
            built = dict(zip(SPLITS, get_task(cfg.task).build_datasets(cfg.data), strict=True))
        except DataProblems as err:
            for problem in err.problems:
                print(f"  {problem}")
            summary = str(err).splitlines()[0].rstrip(":")
            raise DataError(f"{summary} (listed above); nothing was decoded") from None
    total = 0
    summaries = []
    for split in args.split:
        report = check_dataset(built[split], split, args.workers, not args.no_progress)
        for problem in report.problems:
            print(f"  {split}: {problem}")
        for note in report.notes:
            print(f"  {split}: note: {note}")
        total += len(report.problems)
        summaries.append(f"{split}: {report.size} samples, {len(report.problems)} problem(s)")
    print("; ".join(summaries))
    if total:
        raise DataError(
            f"{total} problem(s) in the data of {args.config} (listed above); fix or remove "
            "those files, or train with --set data.on_bad_sample=skip to skip them"
        )
    print(f"no problems in the data of {args.config}")
