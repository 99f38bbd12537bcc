"""``kdforge demo --task segmentation``: a PSPNet trained from scratch on CPU in minutes.

It writes a shapes data set (``out_dir/shapes``: coloured rectangles, ellipses, triangles
and stars on textured backgrounds, semantic masks), trains on it through the library's own
path (``load_config`` overrides, ``build_trainer``, ``Trainer.fit``; run folder
``out_dir/segmentor``, whose ``config.yaml`` is a recipe for ``kdforge train``), prints a
table (best and final mIoU, pixel accuracy, time, final per-class IoU) and writes
``results.json`` and ``results.png`` (losses, validation mIoU per epoch, image / truth /
prediction for three validation images) in ``out_dir``.

The set-up, and why:

* **Model**: ``pspnet_r18`` at mmsegmentation's Cityscapes widths (12.8M parameters,
  output stride 8), from scratch (no ImageNet weights offline). For its first few hundred
  steps it labels almost every pixel background (81% of the pixels): 16-20 mIoU.
* **Data**: 64x64 images, 1000 for training and 100 for validation, 1-6 shapes each. Only
  flips augment (no random rescaling or photometric distortion, unlike the Cityscapes
  recipes); validation on whole images.
* **Recipe**: mmsegmentation's loss (decode CE + 0.4 x auxiliary CE) and poly schedule
  (power 0.9 to 1e-4, per step), SGD momentum 0.9, wd 5e-4, batch 8, 8 epochs (1000
  steps). lr 0.1, not mmseg's 0.01 (set for a pretrained backbone): in a 300-step sweep
  (200 images, decode loss only) lr 0.01 / 0.05 / 0.1 reached 18.5 / 22.7 / 24.9 mIoU.
* **Measured** (defaults, one thread of a 2-core machine shared with other work): seed 0
  48.6 mIoU (background 92.4, rectangle 44.3, ellipse 41.7, triangle 25.0, star 39.8;
  aAcc 89.3) in 8.4 min; seed 1 46.4. Both still rise at the last epoch.
* **No KD comparison**: a teacher worth distilling from needs a longer run of its own, then
  the student alone and the KD student: too long for a demo. ``benchmarks/shapes_kd.py``
  runs one, shortened (CanKD: 27.4 vs 22.5 mIoU; see ``benchmarks/README.md``).
* **Threads**: one CPU thread, as ``kdforge demo``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "format_table",
    "plot_results",
    "predict_validation",
    "read_curves",
    "run_segmentation_demo",
    "segmentation_demo_overrides",
]

SEGMENTOR = "pspnet_r18"
IMAGE_SIZE = 64
NUM_TRAIN, NUM_VAL = 1000, 100
EPOCHS = 8
BATCH_SIZE = 8
LR = 0.1
RUN = "segmentor"
NUM_EXAMPLES = 3
PANELS = ("image", "truth", "prediction")
LEGEND = "black background, red rectangle, green ellipse, yellow triangle, blue star, white ignored"
PALETTE = np.full((256, 3), 255, dtype=np.uint8)
PALETTE[:5] = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200)]


def segmentation_demo_overrides(
    data_root: str | Path,
    out_dir: str | Path,
    epochs: int = EPOCHS,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    teacher: str | Path | None = None,
) -> list[str]:
    """The ``key=value`` overrides of the demo run, for ``load_config(None, overrides)``.

    ``teacher``: a checkpoint of the demo's segmentor (a run's ``best.pt``) to distil from;
    add the distillation terms with ``loss.<term>=...`` overrides.
    """
    from kdforge.data.shapes import SEMANTIC_CLASSES

    size = f"[{image_size}, {image_size}]"
    options = (
        f"{{classes: [{', '.join(SEMANTIC_CLASSES)}], image_dir: '{{split}}', "
        f"mask_dir: 'masks/{{split}}', crop_size: {size}, scale: {size}, "
        "ratio_range: [1.0, 1.0], photometric: false, inference: whole}"
    )
    return [
        "task=segmentation",
        "data.name=segfolder",
        f"data.root={data_root}",
        f"data.options={options}",
        f"data.batch_size={BATCH_SIZE}",
        "data.eval_batch_size=25",
        "data.num_workers=0",
        f"student.name={SEGMENTOR}",
        "loss={segmentation: {}}",
        "optim.name=sgd",
        f"optim.lr={LR}",
        "optim.momentum=0.9",
        "optim.weight_decay=0.0005",
        "schedule.name=poly",
        f"schedule.epochs={epochs}",
        "schedule.power=0.9",
        "schedule.min_lr=0.0001",
        "train.device=cpu",
        "train.amp=none",
        "train.eval_every=1",
        f"train.seed={seed}",
        f"train.out_dir={out_dir}",
        f"train.name={RUN}",
        "train.log_every=5",
        *([f"teacher.name={SEGMENTOR}", f"teacher.pretrained={teacher}"] if teacher else []),
    ]


def read_curves(run_dir: Path) -> dict[str, list[float]]:
    """Per logged step the decode and auxiliary losses; per evaluation mIoU, mAcc, aAcc."""
    from kdforge.commands._runs import evaluations, read_log, records_of

    records = read_log(run_dir)
    train = records_of(records, "train")
    curves = {"step": [float(record["step"]) for record in train]}
    for key in ("decode", "aux"):
        curves[key] = [float(record[f"segmentation.{key}"]) for record in train]
    return curves | evaluations(records, ["mIoU", "mAcc", "aAcc"])


def predict_validation(
    model: Any, dataset: Any
) -> tuple[dict[str, float | None], list[np.ndarray]]:
    """Per-class IoU (%) of ``model`` over ``dataset`` and its label map of every image.

    ``dataset`` yields normalised ``(image, mask)`` pairs (the validation pipeline); each
    image goes through whole-image inference alone, on the model's device.
    """
    import torch

    from kdforge.engine.eval.segmentation import (
        confusion_matrix,
        segmentation_metrics,
        whole_inference,
    )

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    confusion = torch.zeros(dataset.num_classes, dataset.num_classes, dtype=torch.int64)
    predictions = []
    with torch.no_grad():
        for index in range(len(dataset)):
            image, mask = dataset[index]
            pred = whole_inference(model, image[None].to(device)).argmax(1)[0].cpu()
            confusion += confusion_matrix(pred, mask, dataset.num_classes)
            predictions.append(pred.numpy().astype(np.uint8))
    model.train(was_training)
    ious = segmentation_metrics(confusion)["IoU"].tolist()
    # a class absent from both truth and prediction has no IoU (None, as in JSON)
    iou = {c: None if math.isnan(v) else v for c, v in zip(dataset.classes, ious, strict=True)}
    return iou, predictions


def format_table(result: dict[str, Any]) -> str:
    """The results table (mIoU and pixel accuracy in %) and the final per-class IoU."""
    header = (
        f"{'model':<11} {'params':>11} {'best mIoU':>10} {'final mIoU':>11} {'aAcc':>6} {'time':>6}"
    )
    best, final = result["best"], result["final"]
    row = (
        f"{result['model']:<11} {result['params']:>11,} {best['mIoU']:>9.2f}%"
        f" {final['mIoU']:>10.2f}% {final['aAcc']:>5.1f}% {result['seconds']:>5.0f}s"
    )
    classes = [
        f"  {name:<11} {'-' if iou is None else f'{iou:.2f}':>6}"
        for name, iou in final["IoU"].items()
    ]
    return "\n".join([header, "-" * len(header), row, "", "final IoU per class (%):", *classes])


def plot_results(
    curves: dict[str, list[float]],
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Losses per step, validation mIoU per epoch, and ``(image, truth, prediction)`` panels.

    Uses matplotlib's Agg canvas directly (no pyplot), so it needs no display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.2, 2.0])
    ax_loss, ax_miou = top.subplots(1, 2)
    ax_loss.plot(curves["step"], curves["decode"], label="decode head CE")
    ax_loss.plot(curves["step"], curves["aux"], "--", label="auxiliary head CE x 0.4")
    ax_loss.set(
        xlabel="step", ylabel="loss", title="training losses (running mean per epoch)", yscale="log"
    )
    for key in ("mIoU", "mAcc"):
        ax_miou.plot(curves["epoch"], curves[key], marker=".", label=key)
    ax_miou.set(xlabel="epoch", ylabel="%", title="validation", ylim=(0, 100))
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        ax.legend()
    axes = np.asarray(bottom.subplots(1, 3 * len(examples))).reshape(-1, 3)
    for i, (row, (image, truth, pred)) in enumerate(zip(axes, examples, strict=True)):
        for ax, panel, name in zip(
            row, (image, PALETTE[truth], PALETTE[pred]), PANELS, strict=True
        ):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(f"{name} {i + 1}", fontsize=9)
            ax.axis("off")
    bottom.suptitle(f"validation images; {LEGEND}", fontsize=9)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def run_segmentation_demo(
    out_dir: str | Path = "runs/demo_segmentation",
    epochs: int | None = None,
    seed: int = 0,
    *,
    num_train: int = NUM_TRAIN,
    num_val: int = NUM_VAL,
    image_size: int = IMAGE_SIZE,
    num_threads: int | None = 1,
) -> dict[str, Any]:
    """Write the shapes data, train the segmentor, print and save its mIoU and pictures.

    Args:
        out_dir: folder for ``shapes/``, ``segmentor/``, ``results.json``, ``results.png``.
        epochs: training epochs (default 8).
        seed: seed of the data set, the initialisation and the batch order.
        num_train, num_val: shapes images written for training and validation.
        image_size: side of the square images, in pixels.
        num_threads: torch CPU threads during the demo (restored after); None keeps torch's.

    Returns:
        What ``results.json`` holds: the set-up, best and final metrics and the curves.
    """
    from kdforge.commands.demo.runs import cpu_threads, fit_run, prepare_shapes
    from kdforge.config import load_config
    from kdforge.engine.tasks import get_task

    out = Path(out_dir)
    epochs = epochs or EPOCHS
    data_root = prepare_shapes(out, RUN, num_train, num_val, image_size, seed)
    print(
        f"kdforge demo --task segmentation: {SEGMENTOR} from scratch on {num_train} shapes "
        f"images of {image_size}x{image_size} px, {num_val} for validation; {epochs} epochs; "
        f"seed {seed}; CPU. Writing to {out}.",
        flush=True,
    )
    overrides = segmentation_demo_overrides(data_root, out, epochs, seed, image_size)
    cfg = load_config(None, overrides)
    with cpu_threads(num_threads):
        trainer, final, seconds = fit_run(overrides, RUN)
        _, val_set = get_task(cfg.task).build_datasets(cfg.data)
        per_class_iou, predictions = predict_validation(trainer.distiller.student, val_set)
    curves = read_curves(trainer.run_dir)
    best_index = max(range(len(curves["mIoU"])), key=curves["mIoU"].__getitem__)
    result = {
        "model": SEGMENTOR,
        "params": sum(p.numel() for p in trainer.distiller.student.parameters()),
        "seed": seed,
        "data": {"train_images": num_train, "val_images": num_val, "image_size": image_size},
        "epochs": epochs,
        "best": {k: curves[k][best_index] for k in ("epoch", "mIoU", "mAcc", "aAcc")},
        "final": {k: v for k, v in final.items() if isinstance(v, float | int)}
        | {"IoU": per_class_iou},
        "seconds": seconds,
        "run_dir": str(trainer.run_dir),
        "overrides": overrides,
        "curves": curves,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + format_table(result))
    examples = [
        (*map(np.asarray, val_set.load(i)), predictions[i])
        for i in range(min(NUM_EXAMPLES, len(val_set)))
    ]
    png = plot_results(
        curves, examples, out / "results.png", f"kdforge segmentation demo: shapes, seed {seed}"
    )
    print(f"\npicture: {png}\nresults: {out / 'results.json'}\nrun folder: {trainer.run_dir}")
    print(f"training took {seconds / 60:.1f} min")
    return result
