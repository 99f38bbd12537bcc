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


def _run(name: str, overrides: list[str], out: Path, metric: str, read_curves) -> dict:
    """Train one run (``out/name``) and summarise its best and final ``metric``."""
    clear_run_dir(out / name)
    trainer, final, seconds = fit_run([*overrides, f"train.name={name}"], name)
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


def detection(out: Path, args: argparse.Namespace) -> list[dict]:
    """Teacher, student alone, CrossKD student and CanKD student on the detection shapes."""
    root = write_shapes_dataset(out / "shapes", 256, 64, (128, 128), seed=args.seed)
    teacher = _run(
        "teacher",
        detection_demo_overrides(root, out, args.det_teacher_epochs, args.seed),
        out,
        "AP",
        read_detection_curves,
    )
    results = [teacher]
    best_teacher = out / "teacher" / "best.pt"
    for name, term in [("student", None), *DET_TERMS.items()]:
        extra = [] if term is None else [f"loss.{name}={term}"]
        kd = {"teacher": best_teacher} if term else {}
        overrides = detection_demo_overrides(root, out, args.det_epochs, args.seed, **kd)
        results.append(_run(name, [*overrides, *extra], out, "AP", read_detection_curves))
    return results


def segmentation(out: Path, args: argparse.Namespace) -> list[dict]:
    """Teacher, student alone and CanKD student on the segmentation shapes."""
    root = write_shapes_dataset(out / "shapes", 500, 100, (64, 64), seed=args.seed)
    results = [
        _run(
            "teacher",
            segmentation_demo_overrides(root, out, args.seg_teacher_epochs, args.seed),
            out,
            "mIoU",
            read_segmentation_curves,
        )
    ]
    best_teacher = out / "teacher" / "best.pt"
    for name, term in [("student", None), *SEG_TERMS.items()]:
        extra = [] if term is None else [f"loss.{name}={term}"]
        kd = {"teacher": best_teacher} if term else {}
        overrides = segmentation_demo_overrides(root, out, args.seg_epochs, args.seed, **kd)
        results.append(_run(name, [*overrides, *extra], out, "mIoU", read_segmentation_curves))
    return results


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
    parser.add_argument("--only", choices=("detection", "segmentation"))
    parser.add_argument("--det-teacher-epochs", type=int, default=12)
    parser.add_argument("--det-epochs", type=int, default=6)
    parser.add_argument("--seg-teacher-epochs", type=int, default=8)
    parser.add_argument("--seg-epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    tasks = {"detection": (detection, "AP"), "segmentation": (segmentation, "mIoU")}
    summary = {}
    with cpu_threads(args.threads):
        for task, (run_task, metric) in tasks.items():
            if args.only in (None, task):
                summary[task] = run_task(args.out / task, args)
                print("\n" + format_table(task, metric, summary[task]) + "\n", flush=True)
    (args.out / "results.json").write_text(json.dumps(vars(args) | summary, default=str, indent=2))


if __name__ == "__main__":
    main()
