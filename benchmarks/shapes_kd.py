"""CrossKD and CanKD against the student alone on the generated shapes data (CPU, minutes).

The set-ups of ``kdforge demo --task detection`` and ``--task segmentation`` (same models,
data generator, recipes and CPU thread; ``kdforge/commands/demo/detection.py``
and ``segmentation.py`` say why), shortened so that all seven runs fit in about
20 minutes of one CPU thread:

* **detection** (``gfl_r18_fpn`` with a 64-channel FPN and a 2-conv head, from scratch;
  256 training / 64 validation images of 128 px): a teacher trained for
  ``--det-teacher-epochs`` (12), then three students of the same architecture for
  ``--det-epochs`` (6): alone; with CrossKD (stage 1 of the 2-conv towers, i.e. the
  teacher runs its last conv and predictors on the student's first-conv features as in
  the official stage 3 of 4; KDQFL w 1, box-distribution KL w 4: the GFL recipe); with
  CanKD (FPN levels 0-3, ``weight`` 10, the official detection setting).
* **two-stage** (``faster_rcnn_r18_fpn`` with a 64-channel FPN and a 256-wide box head,
  from scratch, 128 sampled RoIs per image instead of 512 (a shapes image holds at most 6
  objects) and the demo's recipe; 128 training / 32 validation images of 96 px, smaller
  than the dense case because plain-torch RoIAlign and NMS cost more CPU): a teacher for
  ``--two-stage-teacher-epochs`` (8), then the student alone and the CanKD student (FPN
  levels 0-3, ``weight`` 10, the teacher run up to its neck: the official Faster R-CNN
  recipe's setting) for ``--two-stage-epochs`` (4).
* **reppoints** (``reppoints_moment_r18_fpn_gn`` with a 64-channel FPN, a 2-conv head
  and 64 point channels, from scratch, on the two-stage task's data and recipe; RepPoints
  learns slower there, hence 3x the epochs): a teacher for ``--reppoints-teacher-epochs``
  (24), then the student alone and the CanKD student (FPN levels 0-3, ``weight`` 10, the
  teacher run up to its neck: the official RepPoints recipe's setting) for
  ``--reppoints-epochs`` (12); about 12 more minutes.
* **dino** (``dino_4scale_r18`` at width 64 with 2 encoder and 2 decoder layers, 100
  queries and up to 20 denoising queries, from scratch, on the two-stage task's data; AdamW
  at 2e-4 with the DINO config's gradient clip 0.1): a teacher for ``--dino-teacher-epochs``
  (48), then the student alone and the CanKD student (neck levels 0-2, ``neck.convs.0..2``,
  ``weight`` 10: the official DINO recipe's setting) for ``--dino-epochs`` (24). Meant for
  a GPU (``--device cuda``): on one CPU thread it takes hours.
* **segmentation** (``pspnet_r18`` from scratch; 500 / 100 images of 64 px): a teacher
  for ``--seg-teacher-epochs`` (8), then the student alone and the CanKD student
  (``backbone.layer4`` of both, ``weight`` 10) for ``--seg-epochs`` (4).

The teacher is the student's architecture trained twice as long (a larger teacher costs
more CPU than this benchmark has): the students learn from a better-trained copy of
themselves. Every run of a task shares the data, the seed (initialisation and batch order)
and the recipe; the students differ only in their loss. Metrics are COCO box AP (%) and
mIoU (%) on the validation images, at the best evaluation and at the end. Usage::

    python benchmarks/shapes_kd.py --out /tmp/shapes_kd
    python benchmarks/shapes_kd.py --only segmentation --seed 1
    python benchmarks/shapes_kd.py --only two-stage reppoints dino --device cuda
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdforge.commands.demo.detection import detection_demo_overrides
from kdforge.commands.demo.detection import read_curves as read_detection_curves
from kdforge.commands.demo.runs import clear_run_dir, cpu_threads, fit_run
from kdforge.commands.demo.segmentation import read_curves as read_segmentation_curves
from kdforge.commands.demo.segmentation import segmentation_demo_overrides
from kdforge.data.shapes import write_shapes_dataset

FPN4 = "[neck.fpn_convs.0, neck.fpn_convs.1, neck.fpn_convs.2, neck.fpn_convs.3]"
DET_TERMS = {
    "crosskd": "{type: crosskd, stage: 1, loss_cls_weight: 1.0, loss_reg_weight: 4.0}",
    "cankd": f"{{student_layers: {FPN4}, weight: 10.0}}",
}
SEG_TERMS = {"cankd": "{student_layers: [backbone.layer4], weight: 10.0}"}
TWO_STAGE_MODEL, TWO_STAGE_SIZE = "faster_rcnn_r18_fpn", 96
TWO_STAGE_KWARGS = (
    "{fpn_channels: 64, fc_out_channels: 256, frozen_stages: -1, norm_eval: false, "
    "num_samples: 128}"
)
TWO_STAGE_TERMS = {"cankd": f"{{student_layers: {FPN4}, weight: 10.0}}"}
REPPOINTS_MODEL = "reppoints_moment_r18_fpn_gn"
REPPOINTS_KWARGS = (
    "{fpn_channels: 64, feat_channels: 64, point_feat_channels: 64, stacked_convs: 2, "
    "frozen_stages: -1, norm_eval: false}"
)
DINO_MODEL = "dino_4scale_r18"
DINO_KWARGS = (
    "{num_queries: 100, embed_dims: 64, num_encoder_layers: 2, num_decoder_layers: 2, "
    "feedforward_channels: 128, num_dn_queries: 20, frozen_stages: -1}"
)
DINO_TERMS = {"cankd": "{student_layers: [neck.convs.0, neck.convs.1, neck.convs.2], weight: 10.0}"}


def _run(name: str, overrides: list[str], out: Path, metric: str, read_curves, device: str) -> dict:
    """Train one run (``out/name``) on ``device`` and summarise its best and final ``metric``."""
    clear_run_dir(out / name)
    trainer, final, seconds = fit_run(
        [*overrides, f"train.device={device}", f"train.name={name}"], name
    )
    curves = read_curves(trainer.run_dir)
    best = max(range(len(curves[metric])), key=curves[metric].__getitem__)
    scale = 100.0 if metric == "AP" else 1.0  # COCO AP is a fraction, mIoU a percentage
    result = {
        "run": name,
        "params": sum(p.numel() for p in trainer.distiller.student.parameters()),
        "best": scale * curves[metric][best],
        "best_epoch": int(curves["epoch"][best]),
        "final": scale * final[metric],
        "seconds": seconds,
    }
    if metric == "AP":
        result["final_AP50"] = 100.0 * final["AP50"]
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


def _teacher_and_students(
    out: Path, make_overrides, terms: dict[str, str], metric: str, read_curves, args, epochs
) -> list[dict]:
    """The teacher for ``epochs[0]`` epochs, then for ``epochs[1]`` the student alone and one
    student per term of ``terms``, all from ``make_overrides(epochs, teacher=None | best.pt)``."""
    teacher_epochs, student_epochs = epochs
    results = [
        _run("teacher", make_overrides(teacher_epochs), out, metric, read_curves, args.device)
    ]
    best_teacher = out / "teacher" / "best.pt"
    for name, term in [("student", None), *terms.items()]:
        extra = [] if term is None else [f"loss.{name}={term}"]
        overrides = make_overrides(student_epochs, teacher=best_teacher if term else None)
        results.append(_run(name, [*overrides, *extra], out, metric, read_curves, args.device))
    return results


def detection(out: Path, args: argparse.Namespace) -> list[dict]:
    """Teacher, student alone, CrossKD student and CanKD student on the detection shapes."""
    root = write_shapes_dataset(out / "shapes", 256, 64, (128, 128), seed=args.seed)

    def overrides(epochs: int, teacher: Path | None = None) -> list[str]:
        kd = {"teacher": teacher} if teacher else {}
        return detection_demo_overrides(root, out, epochs, args.seed, **kd)

    epochs = (args.det_teacher_epochs, args.det_epochs)
    return _teacher_and_students(
        out, overrides, DET_TERMS, "AP", read_detection_curves, args, epochs
    )


def _small_detection(
    out: Path,
    args: argparse.Namespace,
    model: str,
    kwargs: str,
    epochs: tuple[int, int],
    terms: dict[str, str] = TWO_STAGE_TERMS,
    extra: tuple[str, ...] = (),
) -> list[dict]:
    """Teacher, student alone and CanKD student of ``model`` (built with ``kwargs`` instead of
    the demo's GFL ones, the teacher run up to its neck; ``extra`` overrides the demo's
    recipe) on 128 / 32 shapes of 96 px."""
    sizes = (TWO_STAGE_SIZE, TWO_STAGE_SIZE)
    root = write_shapes_dataset(out / "shapes", 128, 32, sizes, seed=args.seed)

    def overrides(epochs: int, teacher: Path | None = None) -> list[str]:
        kd = {"teacher": teacher} if teacher else {}
        demo = detection_demo_overrides(
            root, out, epochs, args.seed, model=model, image_size=sizes[0], **kd
        )
        prefixes = ("student.kwargs=", "teacher.kwargs=")  # the demo's are the GFL's
        demo = [f"{o.split('=')[0]}={kwargs}" if o.startswith(prefixes) else o for o in demo]
        return demo + list(extra) + (["teacher.truncate=true"] if teacher else [])

    return _teacher_and_students(out, overrides, terms, "AP", read_detection_curves, args, epochs)


def two_stage(out: Path, args: argparse.Namespace) -> list[dict]:
    """Faster R-CNN teacher, student alone and CanKD student on smaller detection shapes."""
    epochs = (args.two_stage_teacher_epochs, args.two_stage_epochs)
    return _small_detection(out, args, TWO_STAGE_MODEL, TWO_STAGE_KWARGS, epochs)


def reppoints(out: Path, args: argparse.Namespace) -> list[dict]:
    """RepPoints teacher, student alone and CanKD student on the two-stage task's shapes."""
    epochs = (args.reppoints_teacher_epochs, args.reppoints_epochs)
    return _small_detection(out, args, REPPOINTS_MODEL, REPPOINTS_KWARGS, epochs)


def dino(out: Path, args: argparse.Namespace) -> list[dict]:
    """DINO teacher, student alone and CanKD student on the two-stage task's shapes."""
    epochs = (args.dino_teacher_epochs, args.dino_epochs)
    extra = ("optim.lr=0.0002", "optim.weight_decay=0.0001", "optim.clip_grad_norm=0.1")
    return _small_detection(out, args, DINO_MODEL, DINO_KWARGS, epochs, DINO_TERMS, extra)


def segmentation(out: Path, args: argparse.Namespace) -> list[dict]:
    """Teacher, student alone and CanKD student on the segmentation shapes."""
    root = write_shapes_dataset(out / "shapes", 500, 100, (64, 64), seed=args.seed)

    def overrides(epochs: int, teacher: Path | None = None) -> list[str]:
        kd = {"teacher": teacher} if teacher else {}
        return segmentation_demo_overrides(root, out, epochs, args.seed, **kd)

    epochs = (args.seg_teacher_epochs, args.seg_epochs)
    return _teacher_and_students(
        out, overrides, SEG_TERMS, "mIoU", read_segmentation_curves, args, epochs
    )


TASKS = {  # --only's choices; each writes out/<task>/
    "detection": (detection, "AP"),
    "two-stage": (two_stage, "AP"),
    "reppoints": (reppoints, "AP"),
    "dino": (dino, "AP"),
    "segmentation": (segmentation, "mIoU"),
}


def format_table(task: str, metric: str, results: list[dict]) -> str:
    """A Markdown table of one task's runs, with each distilled student's gain."""
    student = next(r for r in results if r["run"] == "student")
    lines = [
        f"| {task} run | params | best {metric} (epoch) | final {metric} | gain best / final "
        "| time |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        gain = "—"
        if r["run"] not in ("teacher", "student"):
            gain = f"{r['best'] - student['best']:+.1f} / {r['final'] - student['final']:+.1f}"
        lines.append(
            f"| {r['run']} | {r['params']:,} | {r['best']:.1f} ({r['best_epoch']}) "
            f"| {r['final']:.1f} | {gain} | {r['seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/shapes_kd"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=tuple(TASKS), help="tasks to run (all)")
    parser.add_argument("--det-teacher-epochs", type=int, default=12)
    parser.add_argument("--det-epochs", type=int, default=6)
    parser.add_argument("--two-stage-teacher-epochs", type=int, default=8)
    parser.add_argument("--two-stage-epochs", type=int, default=4)
    parser.add_argument("--reppoints-teacher-epochs", type=int, default=24)
    parser.add_argument("--reppoints-epochs", type=int, default=12)
    parser.add_argument("--dino-teacher-epochs", type=int, default=48)
    parser.add_argument("--dino-epochs", type=int, default=24)
    parser.add_argument("--seg-teacher-epochs", type=int, default=8)
    parser.add_argument("--seg-epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="train.device of every run (cuda)")
    args = parser.parse_args()

    summary = {}
    with cpu_threads(args.threads):
        for task, (run_task, metric) in TASKS.items():
            if args.only is None or task in args.only:
                summary[task] = run_task(args.out / task, args)
                print("\n" + format_table(task, metric, summary[task]) + "\n", flush=True)
    (args.out / "results.json").write_text(json.dumps(vars(args) | summary, default=str, indent=2))


if __name__ == "__main__":
    main()
