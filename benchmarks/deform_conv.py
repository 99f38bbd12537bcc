"""Deformable convolution forward + backward at a ResNet stage-3 size: kdforge's
plain-torch version against torchvision's kernel.

The setting is a DCN ``conv2`` of ResNet-50's third stage (``layer3``) in a detector
trained at 1333x800: ``--images`` images, 256 channels in and out, 3x3, stride 1,
padding 1, one deform group, on the 84x50 map of stride 16. Offsets are random (a few
pixels, as a trained DCN's are), so samples fall between pixels and some outside the
map. One step runs the layer and back-propagates a fixed upstream gradient into the
input, the offsets and the weight; reported is the median step time over ``--repeats``
runs after ``--warmup``, both implementations interleaved. kdforge builds the sampled
columns in one chunk here (about 77 MB for 2 images in float32, under ``CHUNK_BYTES``).

Needs torchvision (run it in ``.venv-interop``)::

    .venv-interop/bin/python benchmarks/deform_conv.py
    .venv-interop/bin/python benchmarks/deform_conv.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torchvision

from kdforge.models.detection.deform_conv import deform_conv2d


def make_inputs(images: int, channels: int, height: int, width: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, channels, height, width, generator=g)
    weight = torch.randn(channels, channels, 3, 3, generator=g) / (9 * channels) ** 0.5
    offset = torch.randn(images, 18, height, width, generator=g) * 2
    upstream = torch.randn(images, channels, height, width, generator=g)
    return [t.to(device) for t in (x, offset, weight, upstream)]


def step(fn, x, offset, weight, upstream) -> None:
    leaves = [t.detach().requires_grad_(True) for t in (x, offset, weight)]
    out = fn(*leaves, None, (1, 1), (1, 1), (1, 1))
    (out * upstream).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, nargs=2, default=(50, 84), help="height width")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    inputs = make_inputs(args.images, args.channels, *args.size, device)
    impls = {"kdforge (plain torch)": deform_conv2d, "torchvision": torchvision.ops.deform_conv2d}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for round_ in range(args.warmup + args.repeats):
        for name, fn in impls.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(fn, *inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "shape": [args.images, args.channels, *args.size],
        "median_ms": {name: 1000 * statistics.median(t) for name, t in times.items()},
    }
    print(json.dumps(result, indent=1))
    if args.out:  # atomically: a temporary file renamed over the target
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
