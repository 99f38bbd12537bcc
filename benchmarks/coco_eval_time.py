"""Time of the COCO bbox evaluator (``kdforge.engine.eval.detection.evaluate_coco``).

Writes the shapes generator's validation set (500 images by default), makes 100 detections
per image (each ground-truth box jittered a few times, the rest random boxes, random scores
and labels), and prints the median wall time of ``evaluate_coco`` over a few runs: results
conversion, pycocotools' ``loadRes``, ``evaluate``, ``accumulate`` and ``summarize``, and
writing the results JSON. Usage::

    python benchmarks/coco_eval_time.py
    python benchmarks/coco_eval_time.py --images 5000 --repeats 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from kdforge.data.coco import CocoDetection
from kdforge.data.shapes import write_shapes_dataset
from kdforge.engine.eval.detection import evaluate_coco


def _predictions(ds: CocoDetection, per_image: int, seed: int) -> list[dict]:
    """``per_image`` detections per image: jittered ground truth, then random boxes."""
    gen = torch.Generator().manual_seed(seed)
    preds = []
    for i in range(len(ds)):
        target = ds[i][1]
        h, w = target["orig_size"]
        gt = target["boxes"].repeat(3, 1)[:per_image]  # (G, 4)
        jitter = torch.randn(gt.shape, generator=gen) * 0.05 * (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
        xy = torch.rand(per_image - len(gt), 2, generator=gen) * torch.tensor([w, h])
        wh = torch.rand(per_image - len(gt), 2, generator=gen) * 0.4 * min(h, w) + 2
        boxes = torch.cat([gt + jitter, torch.cat([xy, xy + wh], 1)])  # (per_image, 4)
        labels = torch.cat(
            [
                target["labels"].repeat(3)[: len(gt)],
                torch.randint(ds.num_classes, (per_image - len(gt),), generator=gen),
            ]
        )
        scores = torch.rand(per_image, generator=gen)
        preds.append(
            {"image_id": target["image_id"], "boxes": boxes, "scores": scores, "labels": labels}
        )
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--detections", type=int, default=100, help="per image")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = write_shapes_dataset(tmp, num_train=0, num_val=args.images, image_size=(128, 128))
        ds = CocoDetection(root / "val", root / "annotations" / "instances_val.json")
        preds = _predictions(ds, args.detections, seed=0)
        times, metrics = [], {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            metrics = evaluate_coco(preds, ds, out_json=Path(tmp) / "results.json")
            times.append(time.perf_counter() - start)
        n_gt = sum(len(ds[i][1]["boxes"]) for i in range(len(ds)))
    dets = args.images * args.detections
    where = f"{platform.machine()}, python {platform.python_version()}"
    print(f"{where}, pycocotools {version('pycocotools')}")
    print(f"{args.images} images, {n_gt} ground-truth boxes, {dets} detections")
    print(f"AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}")
    print(f"evaluate_coco: median {statistics.median(times):.2f} s over {args.repeats} runs")


if __name__ == "__main__":
    main()
