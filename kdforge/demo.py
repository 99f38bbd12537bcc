"""``kdforge demo``: a real, small distillation on CPU in a few minutes.

PLACEHOLDER DOCSTRING
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoRun", "demo_overrides", "format_table", "plot_curves", "run_demo"]

TEACHER = "resnet20"
STUDENT = "resnet8"
IMAGE_SIZE = 16
TEST_FRACTION = 0.75
BATCH_SIZE = 32
LR = 0.05
TEACHER_EPOCHS = 20
STUDENT_EPOCHS = 20
ROLES = ("teacher", "student", "kd")
TITLES = {"teacher": "teacher", "student": "student alone", "kd": "KD student"}


@dataclass
class DemoRun:
    """One of the demo's three training runs, as read back from its run folder."""

    role: str
    model: str
    params: int
    best_top1: float
    final_top1: float
    seconds: float
    run_dir: str
    overrides: list[str]
    epochs: list[int] = field(default_factory=list)  # evaluated epochs (1-based)
    val_top1: list[float] = field(default_factory=list)
    train_ce: list[float] = field(default_factory=list)  # unweighted CE, per epoch


def demo_overrides(
    role: str,
    out_dir: str | Path,
    epochs: int,
    seed: int,
    *,
    model: str,
    teacher: str | None = None,
    teacher_checkpoint: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    test_fraction: float = TEST_FRACTION,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
) -> list[str]:
    """The ``--set`` overrides of one demo run (``kdforge train --set ...`` takes the same)."""
    items = [
        "data.name=digits",
        "data.root=null",
        f"data.batch_size={batch_size}",
        "data.eval_batch_size=256",
        "data.num_workers=0",
        f"data.options.size={image_size}",
        f"data.options.test_fraction={test_fraction}",
        f"data.options.seed={seed}",
        f"student.name={model}",
        "optim.name=sgd",
        f"optim.lr={lr}",
        "optim.weight_decay=5e-4",
        "schedule.name=cosine",
        f"schedule.epochs={epochs}",
        "train.device=cpu",
        f"train.seed={seed}",
        f"train.out_dir={out_dir}",
        f"train.name={role}",
        "train.log_every=1",
    ]
    if role == "kd":
        if teacher is None or teacher_checkpoint is None:
            raise ValueError("the KD run needs teacher and teacher_checkpoint")
        items += [
            f"teacher.name={teacher}",
            f"teacher.pretrained={teacher_checkpoint}",
            "train.check_teacher=true",
            "loss.ce.weight=0.1",
            "loss.kd.weight=0.9",
            "loss.kd.temperature=4.0",
        ]
    return items


def _read_log(run_dir: Path) -> tuple[list[int], list[float], list[float]]:
    """Per-epoch validation top-1 and mean unweighted train CE from ``log.jsonl``."""
    epochs, top1, ce_by_epoch = [], [], {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "val":
            epochs.append(int(record["epoch"]))
            top1.append(float(record["top1"]))
        elif record["kind"] == "train" and "ce" in record:
            # log_every=1: the epoch's last record holds the mean over the whole epoch
            ce_by_epoch[int(record["epoch"])] = float(record["ce"])
    ce = [ce_by_epoch[e] for e in sorted(ce_by_epoch)]
    return epochs, top1, ce


def _train(role: str, overrides: list[str], ce_weight: float) -> DemoRun:
    from kdforge.config import load_config
    from kdforge.engine.build import build_trainer

    cfg = load_config(None, overrides)
    print(f"\n== {TITLES[role]}: {cfg.student.name} ==", flush=True)
    start = time.perf_counter()
    trainer = build_trainer(cfg, recipe_name=f"demo-{role}")
    metrics = trainer.fit()
    seconds = time.perf_counter() - start
    epochs, top1, ce = _read_log(trainer.run_dir)
    return DemoRun(
        role=role,
        model=cfg.student.name,
        params=sum(p.numel() for p in trainer.distiller.student.parameters()),
        best_top1=float(trainer.best),
        final_top1=float(metrics["top1"]),
        seconds=seconds,
        run_dir=str(trainer.run_dir),
        overrides=overrides,
        epochs=epochs,
        val_top1=top1,
        train_ce=[v / ce_weight for v in ce],
    )


def format_table(runs: list[DemoRun]) -> str:
    """The results table, plus the KD gain over the student alone in points."""
    header = f"{'run':<14} {'model':<10} {'params':>8} {'best top-1':>11} {'final top-1':>12} {'time':>7}"
    lines = [header, "-" * len(header)]
    for run in runs:
        lines.append(
            f"{TITLES[run.role]:<14} {run.model:<10} {run.params:>8,} {run.best_top1:>10.2f}% "
            f"{run.final_top1:>11.2f}% {run.seconds:>6.0f}s"
        )
    by_role = {run.role: run for run in runs}
    if "student" in by_role and "kd" in by_role:
        best = by_role["kd"].best_top1 - by_role["student"].best_top1
        final = by_role["kd"].final_top1 - by_role["student"].final_top1
        lines.append("-" * len(header))
        lines.append(f"KD gain over the student alone: {best:+.2f} points best, {final:+.2f} final")
    return "\n".join(lines)


def plot_curves(runs: list[DemoRun], path: str | Path, title: str = "") -> Path:
    """Validation top-1 and train CE per epoch of each run, as a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_ce) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        label = f"{TITLES[run.role]} ({run.model})"
        style = "--" if run.role == "teacher" else "-"
        ax_acc.plot(run.epochs, run.val_top1, style, marker=".", label=label)
        ax_ce.plot(range(1, len(run.train_ce) + 1), run.train_ce, style, label=label)
    ax_acc.set(xlabel="epoch", ylabel="validation top-1 (%)", title="validation accuracy")
    low = min((min(r.val_top1) for r in runs if r.val_top1), default=0.0)
    ax_acc.set_ylim(max(low, 80.0) - 1.0, 100.5)
    ax_ce.set(
        xlabel="epoch",
        ylabel="train cross-entropy (unweighted)",
        title="train CE on the labels",
        yscale="log",
    )
    for ax in (ax_acc, ax_ce):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _clear_previous(out_dir: Path) -> list[str]:
    """Remove the demo's own run folders from an earlier run; refuse anything else."""
    removed = []
    for role in ROLES:
        folder = out_dir / role
        if not folder.exists():
            continue
        if not (folder / "config.yaml").is_file():
            raise FileExistsError(
                f"{folder} exists but is not a kdforge run folder; pick another --out"
            )
        shutil.rmtree(folder)
        removed.append(role)
    return removed


def run_demo(
    out_dir: str | Path = "runs/demo",
    epochs: int | None = None,
    seed: int = 0,
    *,
    teacher: str = TEACHER,
    student: str = STUDENT,
    teacher_epochs: int | None = None,
    image_size: int = IMAGE_SIZE,
    test_fraction: float = TEST_FRACTION,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    plot: bool = True,
) -> dict[str, Any]:
    """Train teacher, student alone and KD student on digits; print and save the results.

    Args:
        out_dir: folder for the three run folders, ``results.json`` and ``curves.png``.
        epochs: epochs of every run (default: the demo's own, tuned to show KD's gain).
        seed: seed of the split, the initialisation and the batch order.
        teacher, student: zoo names.
        teacher_epochs: epochs of the teacher (default ``epochs``).
        image_size, test_fraction, batch_size, lr: the set-up (see the module docstring).
        plot: write ``curves.png``.

    Returns:
        What ``results.json`` holds.
    """
    out = Path(out_dir)
    student_epochs = epochs or STUDENT_EPOCHS
    teacher_epochs = teacher_epochs or epochs or TEACHER_EPOCHS
    out.mkdir(parents=True, exist_ok=True)
    removed = _clear_previous(out)
    common = dict(image_size=image_size, test_fraction=test_fraction, batch_size=batch_size, lr=lr)
    print(
        f"kdforge demo: digits at {image_size}x{image_size} px, {1 - test_fraction:.0%} of it "
        f"for training; teacher {teacher}, student {student}; seed {seed}; CPU.\n"
        + (
            f"starting fresh: removed the previous runs ({', '.join(removed)}) in {out}"
            if removed
            else f"writing to {out}"
        ),
        flush=True,
    )
    start = time.perf_counter()
    runs = [
        _train(
            "teacher",
            demo_overrides("teacher", out, teacher_epochs, seed, model=teacher, **common),
            1.0,
        ),
        _train(
            "student",
            demo_overrides("student", out, student_epochs, seed, model=student, **common),
            1.0,
        ),
    ]
    checkpoint = Path(runs[0].run_dir) / "best.pt"
    runs.append(
        _train(
            "kd",
            demo_overrides(
                "kd",
                out,
                student_epochs,
                seed,
                model=student,
                teacher=teacher,
                teacher_checkpoint=checkpoint,
                **common,
            ),
            0.1,
        )
    )
    total = time.perf_counter() - start
    table = format_table(runs)
    results = {
        "seed": seed,
        "data": {"name": "digits", "image_size": image_size, "test_fraction": test_fraction},
        "runs": [asdict(run) for run in runs],
        "kd_gain_best": runs[2].best_top1 - runs[1].best_top1,
        "kd_gain_final": runs[2].final_top1 - runs[1].final_top1,
        "seconds": total,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + table)
    if plot:
        png = plot_curves(
            runs, out / "curves.png", f"kdforge demo: digits {image_size}px, seed {seed}"
        )
        print(f"curves: {png}")
    print(f"results: {out / 'results.json'}; run folders: {', '.join(r.run_dir for r in runs)}")
    print(f"total time {total / 60:.1f} min")
    return results
