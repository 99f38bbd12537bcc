"""``kdforge compare``: one table and one picture of several runs (e.g. baseline vs distilled).

Each run folder holds the ``config.yaml`` the run used and the ``log.jsonl`` the trainer
appends to (:class:`kdforge.engine.logging.RunLogger`): ``"val"`` records carry the
task's metric after each evaluated epoch, ``"train"`` records the running means of the
named losses. The *final* value is that of the last evaluation, the *best* the highest
(the latest on ties, as ``best.pt`` is chosen). A resumed run that logged an epoch twice
keeps the later record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from kdforge.analysis._common import write_csv
from kdforge.engine.tasks import TASKS

__all__ = ["RunSummary", "draw_comparison", "format_comparison", "read_run", "run_compare"]

_NOT_LOSSES = {"kind", "step", "time", "epoch", "lr", "images_per_s", "aux"}


@dataclass
class RunSummary:
    """What one run's log says.

    Attributes:
        name: the run folder's name. student, losses: from its config.yaml.
        metric: the task's metric key (``top1``, ``AP``, ``mIoU``).
        epochs, values: the metric after each evaluated epoch.
        steps, losses: the sum of the logged training losses at each logged step.
        teacher: the teacher's metric, when the run logged it.
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
    """Read ``run_dir/config.yaml`` and ``run_dir/log.jsonl``."""
    run_dir = Path(run_dir)
    config, log = run_dir / "config.yaml", run_dir / "log.jsonl"
    for file in (config, log):
        if not file.is_file():
            raise FileNotFoundError(f"{run_dir}: no {file.name}; is it a kdforge run folder?")
    cfg = OmegaConf.load(config)
    task = cfg.get("task", "classification")
    if task not in TASKS:
        raise ValueError(f"{config}: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    metric = TASKS[task].metric
    terms = list(cfg.get("loss") or {}) or [TASKS[task].loss]
    run = RunSummary(run_dir.name, str(cfg.student.name), terms, metric)
    evaluations: dict[int, float] = {}
    for number, line in enumerate(log.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{log}:{number}: not JSON ({err.msg})") from None
        kind = record.get("kind")
        if kind == "val" and metric in record:
            evaluations[int(record["epoch"])] = float(record[metric])
        elif kind == "teacher" and metric in record:
            run.teacher = float(record[metric])
        elif kind == "train":
            values = [
                float(v)
                for k, v in record.items()
                if k not in _NOT_LOSSES and isinstance(v, (int, float))
            ]
            run.steps.append(int(record["step"]))
            run.losses.append(sum(values))
    run.epochs = sorted(evaluations)
    run.values = [evaluations[e] for e in run.epochs]
    return run


def format_comparison(runs: Sequence[RunSummary]) -> str:
    """A text table: run, student, loss terms, metric, final, best (epoch), teacher."""
    header = ("run", "student", "losses", "metric", "final", "best (epoch)", "teacher")
    rows = [header]
    for run in runs:
        value, epoch = run.best
        teacher = f"{run.teacher:.4g}" if run.teacher is not None else "-"
        rows.append(
            (
                run.name,
                run.student,
                "+".join(run.loss_terms),
                run.metric,
                f"{run.final:.4g}",
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
    for run in runs:
        value, epoch = run.best
        (line,) = left.plot(run.epochs, run.values, marker=".", label=f"{run.name} ({value:.4g})")
        left.plot([epoch], [value], marker="*", markersize=12, color=line.get_color())
        right.plot(run.steps, run.losses, label=run.name, color=line.get_color())
    metrics = sorted({run.metric for run in runs})
    left.set_xlabel("epoch")
    left.set_ylabel(" / ".join(metrics))
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
    runs = [read_run(d) for d in run_dirs]
    rows = [
        [r.name, r.student, "+".join(r.loss_terms), r.metric, r.final, *r.best, r.teacher]
        for r in runs
    ]
    header = ["run", "student", "losses", "metric", "final", "best", "best_epoch", "teacher"]
    out = Path(out)
    csv = write_csv(out / "compare.csv", header, rows)
    png = draw_comparison(runs, out / "compare.png")
    return format_comparison(runs), csv, png
