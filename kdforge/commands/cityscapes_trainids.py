"""``kdforge cityscapes-trainids``: Cityscapes ``*_labelTrainIds.png`` from ``*_labelIds.png``."""

from __future__ import annotations

import argparse

HELP = "write Cityscapes *_labelTrainIds.png from *_labelIds.png"
DESCRIPTION = (
    "The 34 Cityscapes label ids to the 19 training ids (255 = ignored), as "
    "cityscapesScripts' createTrainIdLabelImgs does."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="the Cityscapes folder (holding gtFine/)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing train-id files")


def run(args: argparse.Namespace) -> None:
    from kdforge.data.cityscapes import make_train_ids

    written = make_train_ids(args.root, overwrite=args.overwrite)
    print(f"wrote {written} *_labelTrainIds.png files under {args.root}")
