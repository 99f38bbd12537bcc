"""``kdforge visualize cam|attention|features``: what the models attend to, as PNGs."""

from __future__ import annotations

import argparse

from kdforge.commands._args import add_overrides

HELP = "draw what a model attends to as PNGs"
DESCRIPTION = "Pictures of teacher and student side by side, per image."

KINDS = {
    "cam": "class activation maps of teacher and student for the top classes (CAT-KD)",
    "attention": "the ViT teacher's and the student projector's attention maps (CAKD)",
    "features": "teacher and student feature maps at chosen layers and their difference "
    "(per-position L2 norm over channels, or mean |x|; min-max normalised)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    for name, text in KINDS.items():
        sub = kinds.add_parser(name, help=text, description=text)
        sub.add_argument("config", help="recipe YAML or shipped recipe name (teacher and student)")
        sub.add_argument("--checkpoint", help="student weights: run checkpoint or export")
        sub.add_argument("--images", nargs="+", required=True, help="image files to draw")
        sub.add_argument("--out", default="visualize", help="output folder for the PNGs")
        add_overrides(sub)
        if name != "features":
            sub.add_argument("--top-k", type=int, default=3, help="classes (or heads) per image")
            continue
        sub.add_argument(
            "--layers",
            nargs="+",
            metavar="PATH",
            help="module paths, one row each: PATH (both models) or TEACHER_PATH,STUDENT_PATH "
            "(default: a detector's FPN levels, else each model's last stage)",
        )
        sub.add_argument("--reduce", choices=["l2", "abs_mean"], default="l2", help="over channels")


def run(args: argparse.Namespace) -> None:
    if args.what == "features":
        from kdforge.analysis.features import visualize_features

        paths = visualize_features(
            args.config,
            args.checkpoint,
            args.images,
            args.out,
            args.layers,
            args.reduce,
            args.overrides,
        )
    elif args.what == "cam":
        from kdforge.analysis.cam import visualize_cam

        paths = visualize_cam(
            args.config, args.checkpoint, args.images, args.out, args.top_k, args.overrides
        )
    else:
        from kdforge.analysis.attention import visualize_attention

        paths = visualize_attention(
            args.config, args.checkpoint, args.images, args.out, args.top_k, args.overrides
        )
    for path in paths:
        print(f"wrote {path}")
