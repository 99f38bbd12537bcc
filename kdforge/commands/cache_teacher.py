"""``kdforge cache-teacher``: store a recipe's teacher outputs, or check a stored cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdforge.commands._args import add_overrides

HELP = "store a recipe's teacher outputs per sample and epoch (train with teacher.cache)"
DESCRIPTION = (
    "Run the teacher over N augmented epochs of the training set and store the augmentation "
    "parameters and the outputs the loss terms need (see kdforge.cache); --check compares a "
    "stored cache against the live teacher."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML or shipped recipe name (kdforge recipes)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to store (default: all)")
    parser.add_argument("--out", default=None, help="cache folder (default: runs/<recipe>-cache)")
    parser.add_argument("--topk", type=int, default=None, help="logits kept (default: min(K, 100))")
    parser.add_argument("--check", action="store_true", help="check --out against the live teacher")
    parser.add_argument("--samples", type=int, default=32, help="samples --check recomputes")
    add_overrides(parser)


def run(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from kdforge.cache import (
        CacheError,
        cached_outputs,
        check_cache,
        fingerprint_sections,
        write_cache,
    )
    from kdforge.config import load_config
    from kdforge.engine.build import build_model, build_terms
    from kdforge.engine.seeding import epoch_seed, seed_everything
    from kdforge.engine.tasks import get_task

    cfg = load_config(args.config, args.overrides)
    if cfg.teacher.name is None:
        raise CacheError("teacher.name is not set: there is no teacher to cache")
    task = get_task(cfg.task)
    terms = build_terms(OmegaConf.to_container(cfg.loss, resolve=True) or {task.loss: {}})
    taps, logits, values = cached_outputs(cfg, terms)
    train_set, _ = task.build_datasets(cfg.data)
    teacher = build_model(cfg.teacher, train_set.num_classes).eval().requires_grad_(False)
    source = {
        "train_set": train_set,
        "teacher": teacher,
        "taps": taps,
        "logits": logits,
        "sections": fingerprint_sections(cfg, taps, logits, values),
        "values": values,
    }
    out = args.out or f"runs/{Path(args.config).stem}-cache"
    if args.check:
        worst = check_cache(out, **source, samples=args.samples)
        shown = ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
        print(f"{out} matches the live teacher (largest differences: {shown})")
        return

    def seed_epoch(epoch: int) -> None:  # as the trainer seeds rank 0 at this epoch
        seed_everything(epoch_seed(cfg.train.seed, epoch, 0))

    epochs = args.epochs or cfg.schedule.epochs
    write_cache(out, **source, seed_epoch=seed_epoch, epochs=epochs, topk=args.topk)
    print(f"wrote {out}; train with --set teacher.cache={out}")
