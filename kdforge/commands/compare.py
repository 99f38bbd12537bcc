"""``kdforge compare``: one table and one picture of several runs (e.g. baseline vs distilled).

Each run folder holds the ``config.yaml`` the run used and its ``log.jsonl`` (read by
:mod:`kdforge.commands._runs`). The *final* value is that of the last evaluation, the
*best* the highest (the latest on ties, as ``best.pt`` is chosen); *reported* is the one
the recipe's source publishes (``train.report``, or the task's: best for classification as
mdistiller, final for detection and segmentation as mmdetection and mmsegmentation).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RunSummary", "draw_comparison", "format_comparison", "read_run", "run_compare"]

HELP = "compare runs (e.g. baseline vs distilled): a table and a PNG of curves"
DESCRIPTION = (
    "Read each run folder's config.yaml and log.jsonl; print the final and best validation "
    "metric of each and draw the validation and training-loss curves."
)

# Logged train values that are not losses.
# train records: everything else is a loss term; "<term>.auxiliary" losses (stepped by their
# own optimizer) are not part of the trained sum
_NOT_LOSSES = {"kind", "step", "time", "epoch", "lr", "images_per_s"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    parser.add_argument("--out", default="compare", help="output folder (compare.csv, .png)")


def run(args: argparse.Namespace) -> None:
    table, csv, png = run_compare(args.runs, args.out)
    print(table)
    print(f"wrote {csv}\nwrote {png}")


@dataclass
class RunSummary:
    """What one run's log says.

    Attributes:
        name: the run folder's name. student, loss_terms: from its config.yaml.
        metric: the task's metric key (``top1``, ``AP``, ``mIoU``).
        epochs, values: the metric after each evaluated epoch.
        steps, losses: the sum of the logged training losses at each logged step.
        teacher: the teacher's metric, when the run logged it.
        report: ``"best"`` or ``"final"``: which value the recipe's source publishes.
    """

    name: str
    student: str
    loss_terms: list[str]
    metric: str
    epochs: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    teacher: float | None = None
    report: str = "best"

    @property
    def reported(self) -> float:
        return self.final if self.report == "final" else self.best[0]

    @property
    def final(self) -> float:
        return self.values[-1] if self.values else math.nan

    @property
    def best(self) -> tuple[float, int]:
        """``(value, epoch)`` of the best evaluation (the latest on ties)."""
        if not self.values:
            return math.nan, 0
        i = max(range(len(self.values)), key=lambda k: (self.values[k], k))
        return self.values[i], self.epochs[i]


def read_run(run_dir: str | Path) -> RunSummary:
    """Summarise ``run_dir/config.yaml`` and ``run_dir/log.jsonl``."""
    from kdforge.commands._runs import evaluations, read_config, read_log, records_of
    from kdforge.engine.tasks import get_task

    run_dir = Path(run_dir)
    cfg, records = read_config(run_dir), read_log(run_dir)
    task = get_task(cfg.get("task", "classification"))
    metric = task.metric
    terms = list(cfg.get("loss") or {}) or [task.loss]
    curves = evaluations(records, [metric])
    summary = RunSummary(
        run_dir.name,
        str(cfg.student.name),
        terms,
        metric,
        epochs=[int(epoch) for epoch in curves["epoch"]],
        values=curves[metric],
        report=(cfg.get("train") or {}).get("report") or task.report,
    )
    for record in records_of(records, "teacher"):
        if metric in record:
            summary.teacher = float(record[metric])
    for record in records_of(records, "train"):
        losses = [
            float(v)
            for k, v in record.items()
            if k not in _NOT_LOSSES
            and not k.endswith(".auxiliary")
            and isinstance(v, int | float)
            and not isinstance(v, bool)
        ]
        summary.steps.append(int(record["step"]))
        summary.losses.append(sum(losses))
    return summary


def format_comparison(runs: Sequence[RunSummary]) -> str:
    """A text table: run, student, loss terms, metric, reported, final, best (epoch),
    teacher."""
    header = ("run", "student", "losses", "metric", "reported", "final", "best (epoch)", "teacher")
    rows = [header]
    for summary in runs:
        value, epoch = summary.best
        teacher = f"{summary.teacher:.4g}" if summary.teacher is not None else "-"
        rows.append(
            (
                summary.name,
                summary.student,
                "+".join(summary.loss_terms),
                summary.metric,
                f"{summary.reported:.4g} ({summary.report})",
                f"{summary.final:.4g}",
                f"{value:.4g} ({epoch})",
                teacher,
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def draw_comparison(runs: Sequence[RunSummary], path: str | Path) -> Path:
    """Two panels: the validation metric per epoch (best marked) and the training loss."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    for summary in runs:
        value, epoch = summary.best
        label = f"{summary.name} ({value:.4g})"
        (line,) = left.plot(summary.epochs, summary.values, marker=".", label=label)
        left.plot([epoch], [value], marker="*", markersize=12, color=line.get_color())
        right.plot(summary.steps, summary.losses, label=summary.name, color=line.get_color())
    left.set_xlabel("epoch")
    left.set_ylabel(" / ".join(sorted({summary.metric for summary in runs})))
    left.set_title("validation (★ best)")
    right.set_xlabel("step")
    right.set_ylabel("training loss (sum of logged terms)")
    right.set_title("training loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def run_compare(
    run_dirs: Sequence[str | Path], out: str | Path = "compare"
) -> tuple[str, Path, Path]:
    """Compare runs: returns the table and writes ``out/compare.{csv,png}``."""
    from kdforge.analysis.loading import write_csv

    runs = [read_run(d) for d in run_dirs]
    rows = [
        [r.name, r.student, "+".join(r.loss_terms), r.metric, r.reported, r.report, r.final]
        for r in runs
    ]
    rows = [[*row, *r.best, r.teacher] for row, r in zip(rows, runs, strict=True)]
    header = ["run", "student", "losses", "metric", "reported", "report", "final", "best"]
    header += ["best_epoch", "teacher"]
    out = Path(out)
    csv = write_csv(out / "compare.csv", header, rows)
    png = draw_comparison(runs, out / "compare.png")
    return format_comparison(runs), csv, png
