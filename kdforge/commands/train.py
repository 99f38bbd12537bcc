"""``kdforge train``: train a student, alone or distilled, from a recipe (or resume a run)."""

from __future__ import annotations

import argparse
import numbers
import sys
from pathlib import Path

from kdforge.commands._args import add_overrides

HELP = "train a student (alone or distilled) from a recipe"
DESCRIPTION = (
    "Train from a YAML recipe; each epoch writes last.pt/best.pt, a JSONL log and "
    "TensorBoard events to the run folder."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", help="recipe YAML or shipped recipe name (optional with --resume)"
    )
    add_overrides(parser)
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last.pt with its saved config"
    )


def format_metrics(metrics: dict[str, object]) -> str:
    """``key=value`` for each numeric metric but the evaluated ``count`` (skips e.g. tables)."""
    return " ".join(
        f"{k}={v:.2f}"
        for k, v in metrics.items()
        if k != "count" and isinstance(v, numbers.Real) and not isinstance(v, bool)
    )


def format_summary(summary: dict[str, object]) -> str:
    """The number the recipe's source would publish, with the other one beside it."""
    other = (
        f"best {summary['best']:.4g} at epoch {summary['best_epoch']}"
        if summary["report"] == "final"
        else f"final {summary['final']:.4g}"
    )
    return (
        f"reported {summary['metric']} {summary['reported']:.4g} ({summary['report']}, as the "
        f"recipe's source reports; {other})"
    )


def run(args: argparse.Namespace) -> None:
    from kdforge.config import load_config
    from kdforge.engine.build import build_trainer
    from kdforge.engine.distributed import cleanup_distributed
    from kdforge.engine.hooks import EvalHook
    from kdforge.errors import ConfigError

    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; not a kdforge run")
        if args.config:
            print(f"--resume: using {saved}; {args.config} is ignored", file=sys.stderr)
        cfg = load_config(saved, args.overrides)
        name = Path(args.resume).name
    elif args.config:
        cfg = load_config(args.config, args.overrides)
        name = Path(args.config).stem
    else:
        raise ConfigError("kdforge train needs a recipe (CONFIG) or --resume RUN_DIR")
    try:
        trainer = build_trainer(cfg, recipe_name=name, resume=args.resume)
        metrics = trainer.fit()
        if trainer.dist.is_main:
            print(f"done: {trainer.run_dir} {format_metrics(metrics)}")
            evaluation = trainer.hook(EvalHook)
            if evaluation is not None and evaluation.summary()["reported"] is not None:
                print(format_summary(evaluation.summary()))
    finally:
        cleanup_distributed()
