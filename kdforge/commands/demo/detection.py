"""``kdforge demo --task detection``: a small dense detector trained on CPU in minutes.

The run goes through the library's own path (``load_config`` overrides, ``build_trainer``,
``Trainer.fit``: ``log.jsonl``, TensorBoard events, ``last.pt``/``best.pt`` in
``out_dir/detector``), on a shapes data set that it writes first (``out_dir/shapes``, COCO
format: coloured rectangles, ellipses, triangles and stars on textured backgrounds, crowd
regions ignored). It prints a table (parameters, best and final COCO AP and AP50, time)
and writes ``out_dir/results.json`` and ``out_dir/curves.png`` (training losses per step,
validation AP/AP50 per evaluation). ``out_dir/detector/config.yaml`` is a recipe:
``kdforge train runs/demo_detection/detector/config.yaml --set train.name=again``.

The set-up, and why:

* **Model**: GFL (``gfl_r18_fpn``) with mmdetection's head, assigner and losses, made
  small: FPN and head 64 channels wide, 2 stacked convs instead of 4 (``student.kwargs``).
  There are no ImageNet weights offline, so the whole backbone trains from scratch:
  nothing frozen and BatchNorm in training mode (mmdetection's ``frozen_stages=1`` and
  ``norm_eval=True`` assume a pretrained backbone).
* **Data**: 128x128 images, 256 for training and 64 for validation, 1-6 shapes each.
* **Recipe**: AdamW (lr 0.002, weight decay 0.05, gradient norm clipped at 35) at batch 8,
  a 50-step linear warm-up and a cosine decay, 16 epochs (512 steps), evaluated every 2nd.
  From scratch, AdamW learnt faster than mmdetection's SGD: after 10 epochs, AP 26.2 at lr
  0.001 and 27.9 at lr 0.002, against 22.1 for SGD (momentum 0.9, lr 0.02, wd 1e-4).
* **Threads**: one CPU thread, as ``kdforge demo``.
* **Measured** (defaults, seed 0; torch 2.13 CPU): COCO AP 35.5, AP50 50.9 after 16 epochs
  (AP 15.2 / 25.9 / 33.6 after 4 / 8 / 12), in 4.7 min on one thread of a shared two-core
  machine (7.4 min while it was busier). Runs are deterministic for a seed.
* **KD**: ``benchmarks/shapes_kd.py`` distils this detector, shortened, with CrossKD and
  CanKD (``detection_demo_overrides(..., teacher=...)``; ``benchmarks/README.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "detection_demo_overrides",
    "format_table",
    "plot_curves",
    "read_curves",
    "run_detection_demo",
]

DETECTOR = "gfl_r18_fpn"
MODEL_KWARGS = {
    "fpn_channels": 64,
    "feat_channels": 64,
    "stacked_convs": 2,
    "frozen_stages": -1,
    "norm_eval": False,
}
IMAGE_SIZE = 128
NUM_TRAIN, NUM_VAL = 256, 64
EPOCHS = 16
BATCH_SIZE = 8
LR = 0.002
RUN = "detector"


def detection_demo_overrides(
    data_root: str | Path,
    out_dir: str | Path,
    epochs: int = EPOCHS,
    seed: int = 0,
    *,
    model: str = DETECTOR,
    image_size: int = IMAGE_SIZE,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    teacher: str | Path | None = None,
) -> list[str]:
    """The ``key=value`` overrides of the demo run, for ``load_config(None, overrides)``.

    ``teacher``: a checkpoint of a ``model`` trained by such a run (its ``best.pt``), to
    distil from; add the distillation terms with ``loss.<term>=...`` overrides.
    """
    kwargs = "{" + ", ".join(f"{k}: {str(v).lower()}" for k, v in MODEL_KWARGS.items()) + "}"
    teacher_overrides = []
    if teacher is not None:
        teacher_overrides = [
            f"teacher.name={model}",
            f"teacher.kwargs={kwargs}",
            f"teacher.pretrained={teacher}",
        ]
    return [
        "task=detection",
        "data.name=coco",
        f"data.root={data_root}",
        f"data.options={{train_split: train, val_split: val, scale: [{image_size}, {image_size}]}}",
        f"data.batch_size={batch_size}",
        "data.eval_batch_size=16",
        "data.num_workers=0",
        f"student.name={model}",
        f"student.kwargs={kwargs}",
        "loss={detection: {}}",
        "optim.name=adamw",
        f"optim.lr={lr}",
        "optim.weight_decay=0.05",
        "optim.clip_grad_norm=35",
        "schedule.name=cosine",
        f"schedule.epochs={epochs}",
        "schedule.warmup_iters=50",
        "train.device=cpu",
        "train.amp=none",
        "train.eval_every=2",
        f"train.seed={seed}",
        f"train.out_dir={out_dir}",
        f"train.name={RUN}",
        "train.log_every=4",
        *teacher_overrides,
    ]


def read_curves(run_dir: Path) -> dict[str, list[float]]:
    """Per logged step the summed and per-term losses; per evaluation AP and AP50."""
    from kdforge.commands._runs import evaluations, read_log, records_of

    records = read_log(run_dir)
    curves: dict[str, list[float]] = {"step": [], "loss": []}
    curves |= evaluations(records, ["AP", "AP50"])
    for record in records_of(records, "train"):
        terms = {k: v for k, v in record.items() if k.startswith("detection.")}
        curves["step"].append(float(record["step"]))
        curves["loss"].append(sum(terms.values()))
        for key, value in terms.items():
            curves.setdefault(key.removeprefix("detection."), []).append(value)
    return curves


def format_table(result: dict[str, Any]) -> str:
    """The results table: model, parameters, best and final AP / AP50 (in %), time."""
    header = f"{'model':<12} {'params':>10} {'best AP':>8} {'AP50':>6} {'final AP':>9} {'AP50':>6}"
    header += f" {'time':>6}"
    best, final = result["best"], result["final"]
    row = (
        f"{result['model']:<12} {result['params']:>10,} {100 * best['AP']:>7.1f}%"
        f" {100 * best['AP50']:>5.1f}% {100 * final['AP']:>8.1f}% {100 * final['AP50']:>5.1f}%"
        f" {result['seconds']:>5.0f}s"
    )
    return "\n".join([header, "-" * len(header), row])


def plot_curves(curves: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """Training losses per step and validation AP/AP50 per epoch, as a PNG (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="tight")
    FigureCanvasAgg(fig)
    ax_loss, ax_ap = fig.subplots(1, 2)
    for key, values in curves.items():
        if key not in ("step", "epoch", "AP", "AP50"):
            style = "-" if key == "loss" else "--"
            ax_loss.plot(curves["step"], values, style, label=key)
    ax_loss.set(xlabel="step", ylabel="loss", title="training losses (sum and terms)")
    ax_ap.plot(curves["epoch"], [100 * v for v in curves["AP"]], marker=".", label="AP")
    ax_ap.plot(curves["epoch"], [100 * v for v in curves["AP50"]], marker=".", label="AP50")
    ax_ap.set(xlabel="epoch", ylabel="COCO box AP (%)", title="validation AP", ylim=(0, 100))
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def run_detection_demo(
    out_dir: str | Path = "runs/demo_detection",
    epochs: int | None = None,
    seed: int = 0,
    *,
    num_train: int = NUM_TRAIN,
    num_val: int = NUM_VAL,
    image_size: int = IMAGE_SIZE,
    num_threads: int | None = 1,
) -> dict[str, Any]:
    """Write the shapes data, train the small detector, print and save its COCO AP.

    Args:
        out_dir: folder for ``shapes/``, the run folder ``detector/``, ``results.json`` and
            ``curves.png``.
        epochs: training epochs (default 16).
        seed: seed of the data set, the initialisation and the batch order.
        num_train, num_val: shapes images written for training and validation.
        image_size: side of the square images, in pixels.
        num_threads: torch CPU threads during the demo (restored after); None keeps torch's.

    Returns:
        What ``results.json`` holds: the set-up, best and final metrics and the curves.
    """
    from kdforge.commands.demo.runs import cpu_threads, fit_run, prepare_shapes

    out = Path(out_dir)
    epochs = epochs or EPOCHS
    data_root = prepare_shapes(out, RUN, num_train, num_val, image_size, seed)
    print(
        f"kdforge demo --task detection: {DETECTOR} (small head) on {num_train} shapes images "
        f"of {image_size}x{image_size} px, {num_val} for validation; {epochs} epochs; seed "
        f"{seed}; CPU. Writing to {out}.",
        flush=True,
    )
    overrides = detection_demo_overrides(data_root, out, epochs, seed, image_size=image_size)
    with cpu_threads(num_threads):
        trainer, final, seconds = fit_run(overrides, RUN)
    curves = read_curves(trainer.run_dir)
    best_index = max(range(len(curves["AP"])), key=curves["AP"].__getitem__)
    result = {
        "model": DETECTOR,
        "model_kwargs": MODEL_KWARGS,
        "params": sum(p.numel() for p in trainer.distiller.student.parameters()),
        "seed": seed,
        "data": {"train_images": num_train, "val_images": num_val, "image_size": image_size},
        "epochs": epochs,
        "best": {"epoch": curves["epoch"][best_index]}
        | {k: curves[k][best_index] for k in ("AP", "AP50")},
        "final": {k: float(v) for k, v in final.items()},
        "seconds": seconds,
        "run_dir": str(trainer.run_dir),
        "overrides": overrides,
        "curves": curves,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + format_table(result))
    png = plot_curves(curves, out / "curves.png", f"kdforge detection demo: shapes, seed {seed}")
    print(f"\ncurves: {png}\nresults: {out / 'results.json'}\nrun folder: {trainer.run_dir}")
    print(f"total {seconds / 60:.1f} min")
    return result
