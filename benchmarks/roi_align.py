"""RoIAlign forward + backward at Faster R-CNN's training size: kdforge's plain-torch
version against torchvision's kernel.

The setting is mmdetection's Faster R-CNN R50-FPN training step: ``--images`` images of
1216x800 (the padded size of a 1333x800 resize), 512 sampled RoIs per image, P2-P5 maps of
256 channels (strides 4-32), 7x7 output, sampling ratio 0 (adaptive), aligned. RoIs get
random COCO-like sizes (square roots of area log-uniform in [16, 800] pixels) and are
mapped to levels as ``SingleRoIExtractor`` does (``floor(log2(sqrt(wh) / 56))``, clamped to
the four levels, finest scale 56). One step runs RoIAlign on each level's RoIs and
back-propagates a fixed upstream gradient; reported is the median step time over
``--repeats`` runs after ``--warmup``, both implementations interleaved.

Needs torchvision (run it in ``.venv-interop``)::

    .venv-interop/bin/python benchmarks/roi_align.py
    .venv-interop/bin/python benchmarks/roi_align.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision

from kdforge.models.detection.roi_align import roi_align_plain

STRIDES = (4, 8, 16, 32)


def make_inputs(images: int, rois_per_image: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    height, width = 800, 1216
    maps = [
        torch.randn(images, 256, height // s, width // s, generator=g).to(device) for s in STRIDES
    ]
    k = images * rois_per_image
    side = torch.exp(torch.empty(k).uniform_(16**0.5, 800**0.5, generator=g).log() * 2)
    aspect = torch.exp(torch.empty(k).uniform_(-0.7, 0.7, generator=g))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = torch.rand(k, generator=g) * width, torch.rand(k, generator=g) * height
    batch = torch.arange(images).repeat_interleave(rois_per_image).float()
    rois = torch.stack([batch, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).to(device)
    level = torch.floor(torch.log2((w * h).sqrt() / 56 + 1e-6)).clamp(0, 3).long().to(device)
    return maps, rois, level


def step(fn, maps, rois, level) -> None:
    leaves = [m.detach().requires_grad_(True) for m in maps]
    outs = []
    for i, (features, stride) in enumerate(zip(leaves, STRIDES, strict=True)):
        mine = rois[level == i]
        outs.append(fn(features, mine, (7, 7), 1 / stride, 0, True))
    torch.cat(outs).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rois", type=int, default=512, help="RoIs per image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    maps, rois, level = make_inputs(args.images, args.rois, device)
    impls = {"kdforge (plain torch)": roi_align_plain, "torchvision": torchvision.ops.roi_align}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for round_ in range(args.warmup + args.repeats):
        for name, fn in impls.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(fn, maps, rois, level)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "images": args.images,
        "rois_per_level": torch.bincount(level, minlength=4).tolist(),
        "median_ms": {name: 1000 * statistics.median(t) for name, t in times.items()},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
