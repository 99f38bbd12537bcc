"""Aspect-ratio grouping: padded pixels and detector step time, with and without it.

mmdetection batches images of one orientation (``AspectRatioBatchSampler``); without it a
portrait and a landscape image pad to about their union. This script measures what the
grouping (``data.group_by_aspect_ratio``) changes on a COCO-like set of mixed orientations:

1. **The set.** The shapes generator (``kdforge.data.shapes``) writes ``--images`` training
   images whose sizes are drawn from COCO's common ones (landscape 640x480, 640x427,
   640x426, 640x360, 500x375; portrait 480x640, 427x640, 375x500; square 640x640), a
   ``--portrait`` share of them portrait, each divided by ``--shrink``.
2. **Padded pixels, exact.** Each image's size after the training pipeline's keep-ratio
   resize (``rescale_size`` at ``--scale`` / shrink), each batch padded at the bottom and
   right to its largest height and width rounded up to 32 (``collate_detection``); the
   fraction is padding / all pixels of the epoch's batch tensors, over ``--epochs``
   epochs, for each of ``--batch-sizes``: plain batches (``DistributedSampler`` +
   ``batch_size``, as ``build_data`` without grouping) and grouped ones over the same
   shuffled order. Also at full size (the sizes times shrink, scale 1333 x 800), from the
   sizes alone.
3. **Step time.** A freshly initialised ``--model`` trains (forward, losses, backward, SGD
   step) on the first ``--steps`` batches of an epoch, each mode's batches built once by
   the real pipeline (OpenCV decode and resize, flip, normalise, collate); modes run
   interleaved round by round so drift hits both alike; reported is the median over
   ``--repeats`` rounds (after ``--warmup``) of the mean step time.

Usage::

    python benchmarks/aspect_ratio.py                         # CPU, 1/4 of COCO's size
    python benchmarks/aspect_ratio.py --device cuda --shrink 1 --model gfl_r50_fpn
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler

from kdforge.data import build_coco_datasets
from kdforge.data.det_transforms import collate_detection
from kdforge.data.geometric import rescale_size
from kdforge.data.samplers import AspectRatioBatchSampler, portrait_flags
from kdforge.data.shapes import write_shapes_dataset
from kdforge.models import create_model

LANDSCAPE = [(640, 480), (640, 427), (640, 426), (640, 360), (500, 375)]  # (width, height)
PORTRAIT = [(480, 640), (427, 640), (375, 500)]
SQUARE = (640, 640)
FULL_SCALE = (1333, 800)


class _Sizes:
    """A stand-in data set that knows only its images' ``(width, height)``."""

    def __init__(self, sizes: Sequence[tuple[int, int]]) -> None:
        self.sizes = list(sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def image_size(self, index: int) -> tuple[int, int]:
        return self.sizes[index]


def coco_like_sizes(n: int, portrait: float, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` ``(width, height)`` pairs: a ``portrait`` share portrait, 3 % square."""
    gen = torch.Generator().manual_seed(seed)
    sizes = []
    for draw in torch.rand(n, generator=gen).tolist():
        pick = int(torch.randint(100, (1,), generator=gen).item())
        if draw < portrait:
            sizes.append(PORTRAIT[pick % len(PORTRAIT)])
        elif draw < portrait + 0.03:
            sizes.append(SQUARE)
        else:
            sizes.append(LANDSCAPE[pick % len(LANDSCAPE)])
    return sizes


def batch_sampler(data, batch: int, grouped: bool, seed: int = 0) -> Sampler[list[int]]:
    """``build_data``'s training batches for one process: with or without grouping."""
    inner = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed)
    if grouped:
        return AspectRatioBatchSampler(inner, portrait_flags(data), batch)
    return BatchSampler(inner, batch, drop_last=False)


def padded_fraction(
    data, scale: tuple[int, int], batch: int, grouped: bool, epochs: int, divisor: int = 32
) -> tuple[float, float]:
    """(padding / batch pixels, mean batch tensor pixels per image) over ``epochs``."""
    resized = [rescale_size(*data.image_size(i), scale) for i in range(len(data))]  # (w, h)
    sampler = batch_sampler(data, batch, grouped)
    content = total = images = 0
    for epoch in range(epochs):
        sampler.sampler.set_epoch(epoch)  # both keep the DistributedSampler there
        for indices in sampler:
            width = math.ceil(max(resized[i][0] for i in indices) / divisor) * divisor
            height = math.ceil(max(resized[i][1] for i in indices) / divisor) * divisor
            total += len(indices) * width * height
            content += sum(resized[i][0] * resized[i][1] for i in indices)
            images += len(indices)
    return 1 - content / total, total / images


def _to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


def _pads(targets: list[dict], divisor: int = 32) -> list[tuple[int, int]]:
    """Each image's ``img_shape`` rounded up to ``divisor`` (the detection loss's pad shapes)."""
    return [tuple(math.ceil(s / divisor) * divisor for s in t["img_shape"]) for t in targets]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=240, help="training images")
    parser.add_argument("--portrait", type=float, default=0.3, help="share of portrait images")
    parser.add_argument("--shrink", type=int, default=4, help="image sizes and scale / this")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--epochs", type=int, default=5, help="epochs for the padded fraction")
    parser.add_argument("--model", default="retinanet_r18_fpn")
    parser.add_argument("--batch-size", type=int, default=2, help="for the step time")
    parser.add_argument("--steps", type=int, default=8, help="batches timed per round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", default=None, help="where to write the set (default: temp)")
    args = parser.parse_args()

    sizes = coco_like_sizes(args.images, args.portrait)
    small = [(max(w // args.shrink, 32), max(h // args.shrink, 32)) for w, h in sizes]
    scale = (FULL_SCALE[0] // args.shrink, FULL_SCALE[1] // args.shrink)
    device = torch.device(args.device)
    where = device.type if device.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, python "
        f"{platform.python_version()}, torch {torch.__version__}, {where}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        start = time.perf_counter()
        write_shapes_dataset(
            root, args.images, 1, image_size=[(h, w) for w, h in small], crowd_prob=0.0
        )
        train, _ = build_coco_datasets(root, "train", "val", scale=scale)
        share = sum(portrait_flags(train)) / len(train)
        print(
            f"set: {len(train)} images ({share:.0%} portrait) at 1/{args.shrink} of COCO-like "
            f"sizes, written in {time.perf_counter() - start:.0f} s; train scale {scale}"
        )

        print("\npadded-pixel fraction over an epoch (mean batch tensor pixels per image):")
        print("| size | scale | batch | plain | grouped |\n|---|---|---|---|---|")
        for label, data, at in (
            (f"1/{args.shrink}", train, scale),
            ("full", _Sizes(sizes), FULL_SCALE),
        ):
            for batch in args.batch_sizes:
                cells = []
                for grouped in (False, True):
                    frac, pixels = padded_fraction(data, at, batch, grouped, args.epochs)
                    cells.append(f"{frac:.1%} ({pixels / 1e3:.0f} k)")
                print(f"| {label} | {at[0]}x{at[1]} | {batch} | {cells[0]} | {cells[1]} |")

        torch.manual_seed(0)
        batches = {}
        for grouped in (False, True):
            loader = DataLoader(
                train,
                batch_sampler=batch_sampler(train, args.batch_size, grouped),
                collate_fn=collate_detection,
            )
            batches[grouped] = [
                (images.to(device), _to(targets, device))
                for _, (images, targets) in zip(range(args.steps), loader, strict=False)
            ]

    models = {}
    for grouped in (False, True):
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=train.num_classes).to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        models[grouped] = model, torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def epoch_part(grouped: bool) -> None:
        model, optimizer = models[grouped]
        for images, targets in batches[grouped]:
            losses = model.loss(model(images), targets, _pads(targets))
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()

    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.warmup + args.repeats):
        for grouped in (False, True):
            _sync(device)
            start = time.perf_counter()
            epoch_part(grouped)
            _sync(device)
            if round_ >= args.warmup:
                times[grouped].append((time.perf_counter() - start) / args.steps)

    print(
        f"\n{args.model} training step (forward, losses, backward, SGD), batch "
        f"{args.batch_size}, the first {args.steps} batches of an epoch, median of "
        f"{args.repeats} rounds after {args.warmup}:"
    )
    print("| batches | padded batch shapes (H x W) | step ms | range |\n|---|---|---|---|")
    for grouped in (False, True):
        shapes = sorted({tuple(images.shape[-2:]) for images, _ in batches[grouped]})
        shown = ", ".join(f"{h}x{w}" for h, w in shapes)
        values = [1e3 * t for t in times[grouped]]
        print(
            f"| {'grouped' if grouped else 'plain'} | {shown} | {statistics.median(values):.1f} |"
            f" {min(values):.1f}–{max(values):.1f} |"
        )
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"grouped / plain step time: {ratio:.3f}")


if __name__ == "__main__":
    main()
