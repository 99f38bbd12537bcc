"""Training-step and inference time of a dense detector at COCO size (``gfl_r50_fpn``, CPU).

Times, interleaved round by round (so drift in machine speed hits both alike), the median of

* a training step: forward, the detector's losses (ATSS assignment, QFL, DFL, GIoU),
  backward and an SGD step (momentum 0.9, weight decay 1e-4) over the trainable parameters
  (mmdetection's defaults: stem and ``layer1`` frozen, BatchNorm in eval mode);
* inference: eval-mode forward without autograd plus ``predict`` (score threshold, top-k
  pre-NMS per level, class-aware NMS, max 100 per image).

The input is a batch of ``--batch-size`` random images at ``--height`` x ``--width``
(800 x 1333 padded to 800 x 1344, mmdetection's default test scale) with ``--boxes``
random ground-truth boxes each (COCO averages about 7). The detector is freshly
initialised, so its class scores sit near the 0.01 prior and few pass the 0.05 threshold;
``--score-thr 0`` instead sends the full ``nms_pre`` candidates per level to NMS (the
post-processing worst case). Usage::

    python benchmarks/detection_step.py                       # gfl_r50_fpn, batch 2, 3 rounds
    python benchmarks/detection_step.py --score-thr 0 --repeats 5
    python benchmarks/detection_step.py --device cuda --repeats 20
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch

from kdforge.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _targets(n: int, boxes: int, height: int, width: int, device: torch.device) -> list[dict]:
    """``n`` images' worth of random xyxy boxes (16 px to half the image) and labels."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        wh = 16 + torch.rand(boxes, 2, generator=gen) * torch.tensor([width, height]) / 2
        xy = torch.rand(boxes, 2, generator=gen) * (torch.tensor([width, height]) - wh)
        labels = torch.randint(80, (boxes,), generator=gen)
        out.append({"boxes": torch.cat([xy, xy + wh], 1).to(device), "labels": labels.to(device)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gfl_r50_fpn")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--boxes", type=int, default=7, help="ground-truth boxes per image")
    parser.add_argument("--score-thr", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_model(args.model, num_classes=80, score_thr=args.score_thr).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    pad_h, pad_w = (math.ceil(s / 32) * 32 for s in (args.height, args.width))
    images = torch.randn(args.batch_size, 3, pad_h, pad_w, device=device)
    targets = _targets(args.batch_size, args.boxes, args.height, args.width, device)
    sizes = [(args.height, args.width)] * args.batch_size
    detections: list[int] = []

    def train_step() -> None:
        model.train()
        losses = model.loss(model(images), targets, (pad_h, pad_w))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    def inference() -> None:
        model.eval()
        with torch.no_grad():
            results = model.predict(model(images), sizes)
        detections.append(sum(len(r["scores"]) for r in results))

    jobs = {"train_step": train_step, "inference": inference}
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for round_ in range(args.warmup + args.repeats):
        for name, job in jobs.items():
            _sync(device)
            start = time.perf_counter()
            job()
            _sync(device)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)

    where = device.type if device.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"torch {torch.__version__}, {where}"
    )
    n_params, n_trainable = (sum(p.numel() for p in ps) for ps in (model.parameters(), params))
    print(
        f"{args.model} ({n_params / 1e6:.1f} M parameters, {n_trainable / 1e6:.1f} M trainable)"
        f", batch {args.batch_size} at {args.height}x{args.width} (padded "
        f"{pad_h}x{pad_w}), {args.boxes} boxes/image, score_thr {args.score_thr}"
    )
    for name, values in times.items():
        per_image = statistics.median(values) / args.batch_size
        print(
            f"{name}: median {statistics.median(values):.2f} s ({per_image:.2f} s/image) over "
            f"{args.repeats} rounds; min {min(values):.2f} s, max {max(values):.2f} s"
        )
    print(f"detections per batch after NMS: {detections[-1]}")


if __name__ == "__main__":
    main()
