"""``kdforge bench``: the speed and memory of a training step, per method and teacher option.

Groups, each a teacher → student pair on random inputs of the task's usual kind:

* ``cifar``: resnet32x4 → resnet8x4, 32×32 — KD (and KD with each teacher option), DKD,
  CAT-KD (and truncated), and KD and CAT-KD trained from a teacher cache (the stored logits,
  or pooled CAMs, come with the batch; reading them is the DataLoader workers' job and is
  not timed);
* ``imagenet``: vit_ti_16 → resnet18, 224×224 — CAKD;
* ``coco``: gfl_r50_fpn → gfl_r18_fpn, 256×256 — CrossKD, CanKD, PKD (truncated teacher);
* ``coco-dino``: dino_4scale_r101 → dino_4scale_r50, one 320×320 image, 900 queries — CanKD
  on neck levels 0-2 (truncated teacher).

Each group also times a student-only step (its task loss through a teacher-less
:class:`~kdforge.Distiller`) and a teacher forward (eval, ``torch.no_grad``). A step is
forward, loss, backward and an SGD step. Within a group the cases run interleaved round by
round (drift in machine speed hits all alike) and the median is reported, with

* ``vs student``: the step time over the student-only step's;
* ``overhead``: the step time over student step + teacher forward — what distillation
  costs beyond the work it cannot avoid (≤ 1.03 is the KD target; a cache case has no
  teacher forward, its target is ``vs student`` ≤ 1.10);
* ``peak MB``: on CPU, each case runs in a fresh subprocess and reports the growth of
  its resident-set high-water mark (Linux ``VmHWM``) over two training steps,
  measured after the models exist; on CUDA, ``torch.cuda.max_memory_allocated`` over the
  same steps minus what was allocated before.

No test asserts a time: quote these numbers from a quiet machine. CanKD's two product
orders are timed separately by ``benchmarks/cankd_product.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["CASES", "GROUPS", "build_step", "peak_memory_mb", "peak_rss_kb", "run_bench"]

HELP = "time a training step of each method and teacher option"
DESCRIPTION = (
    "Speed and peak memory of a training step per method and teacher option; prints one "
    "table and writes benchmarks/results.json."
)

# Loss terms as a recipe's ``loss`` section: name -> options (``type`` picks the term
# when it differs from the name).
Terms = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Group:
    teacher: str
    student: str
    image_size: tuple[int, int]
    batch_size: int
    num_classes: int
    task: str = "classification"  # or "detection": box targets and the detection loss


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    terms: Terms | None = None  # None: the student alone, or the teacher forward
    options: dict[str, Any] = field(default_factory=dict)  # Distiller teacher options
    cached: bool = False  # from replayed teacher values (no teacher built, no forward)


GROUPS = {
    "cifar": Group("resnet32x4", "resnet8x4", (32, 32), 64, 100),
    "imagenet": Group("vit_ti_16", "resnet18", (224, 224), 8, 1000),
    "coco": Group("gfl_r50_fpn", "gfl_r18_fpn", (256, 256), 2, 80, "detection"),
    "coco-two-stage": Group(
        "faster_rcnn_r50_fpn", "faster_rcnn_r18_fpn", (256, 256), 2, 80, "detection"
    ),
    # CrossKD's heterogeneous row: a transformer teacher, a CNN student
    "coco-swin": Group("retinanet_swin_t_fpn", "retinanet_r50_fpn", (256, 256), 2, 80, "detection"),
    # CanKD's DINO row at a CPU size (900 queries, as the recipes; forward stops at the neck,
    # so "teacher forward" is the R-101 backbone and neck, and the student's transformer,
    # matching and denoising run in its detection loss)
    "coco-dino": Group("dino_4scale_r101", "dino_4scale_r50", (320, 320), 1, 80, "detection"),
}

KD: Terms = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}}
CAT_KD: Terms = {"ce": {"weight": 1.0}, "cat_kd": {"weight": 400.0}}
FPN = [f"neck.fpn_convs.{i}" for i in range(4)]
CASES = [
    Case("cifar", "student"),
    Case("cifar", "teacher forward"),
    Case("cifar", "KD", KD),
    Case("cifar", "KD, no_grad teacher", KD, {"teacher_inference_mode": False}),
    Case("cifar", "KD, bf16 teacher", KD, {"teacher_dtype": "bfloat16"}),
    Case("cifar", "KD, channels_last teacher", KD, {"teacher_channels_last": True}),
    Case("cifar", "KD, from cache", KD, cached=True),
    Case("cifar", "DKD", {"ce": {"weight": 1.0}, "dkd": {}}),
    Case("cifar", "CAT-KD", CAT_KD),
    Case("cifar", "CAT-KD, truncated teacher", CAT_KD, {"truncate_teacher": True}),
    Case("cifar", "CAT-KD, from cache", CAT_KD, cached=True),
    Case("imagenet", "student"),
    Case("imagenet", "teacher forward"),
    Case("imagenet", "CAKD", {"ce": {"weight": 1.0}, "cakd": {}}),
    Case("coco", "student"),
    Case("coco", "teacher forward"),
    Case("coco", "CrossKD", {"detection": {}, "crosskd": {}}),
    Case("coco", "CanKD", {"detection": {}, "cankd": {"student_layers": FPN}}),
    Case(
        "coco",
        "PKD, truncated teacher",
        {"detection": {}, "kd": {"type": "pkd"}},
        {"truncate_teacher": True},
    ),
    Case("coco-two-stage", "student"),
    Case("coco-two-stage", "teacher forward"),
    Case(
        "coco-two-stage",
        "CanKD, truncated teacher",  # as the CanKD recipes run it
        {"detection": {}, "cankd": {"student_layers": FPN}},
        {"truncate_teacher": True},
    ),
    Case("coco-swin", "student"),
    Case("coco-swin", "teacher forward"),
    Case("coco-swin", "CrossKD", {"detection": {}, "crosskd": {"stage": 3}}),
    Case("coco-dino", "student"),
    Case("coco-dino", "teacher forward"),
    Case(
        "coco-dino",
        "CanKD, truncated teacher",  # nlkd_dino-r101_dino-r50_12e_coco: neck levels 0-2
        {"detection": {}, "cankd": {"student_layers": [f"neck.convs.{i}" for i in range(3)]}},
        {"truncate_teacher": True},
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--out", default="benchmarks/results.json", help="results file")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # GROUP/CASE, in a subprocess


def run(args: argparse.Namespace) -> None:
    """Run the suite from parsed arguments; print the table, write the JSON."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.memory_of:  # one case in this fresh process, for _memory_in_subprocess
        if args.threads:
            torch.set_num_threads(args.threads)
        group, name = args.memory_of.split("/", 1)
        case = next(c for c in CASES if c.group == group and c.name == name)
        print(peak_memory_mb(case, torch.device(device)))
        return
    results = run_bench(
        args.groups, args.repeats, args.warmup, device, args.threads, not args.no_memory
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    machine = results["machine"]
    print(
        f"{machine['name']} ({machine['device']}), {machine['threads']} threads, "
        f"torch {machine['torch']}, load average {machine['load_average']}"
    )
    print(format_table(results))
    print(f"wrote {out}")


def _build_terms(terms: Terms) -> dict[str, Any]:
    from kdforge.losses import TERMS

    built = {}
    for name, options in terms.items():
        options = dict(options)
        built[name] = TERMS[options.pop("type", name)](**options)
    return built


def _inputs(group: Group, device: torch.device) -> tuple[torch.Tensor, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    n, (h, w) = group.batch_size, group.image_size
    x = torch.randn(n, 3, h, w, generator=g).to(device)
    if group.task == "detection":
        box = torch.tensor([[0.1 * w, 0.1 * h, 0.6 * w, 0.7 * h]], device=device)
        label = torch.tensor([1], device=device)
        return x, [{"boxes": box, "labels": label, "img_shape": (h, w)} for _ in range(n)]
    return x, torch.randint(0, group.num_classes, (n,), generator=g).to(device)


def build_step(case: Case, device: torch.device) -> Callable[[], None]:
    """A closure running one training step (or one teacher forward) of ``case``."""
    import torch

    from kdforge.cache import teacher_replay
    from kdforge.distiller import Distiller
    from kdforge.models import create_model

    group = GROUPS[case.group]
    torch.manual_seed(0)
    x, y = _inputs(group, device)
    student = create_model(group.student, num_classes=group.num_classes).to(device)
    if case.name == "teacher forward":
        teacher = create_model(group.teacher, num_classes=group.num_classes).to(device).eval()

        def forward() -> None:
            with torch.no_grad():
                teacher(x)

        return forward
    if case.terms is None:  # the student alone, on its task loss
        task_loss = "detection" if group.task == "detection" else "ce"
        distiller = Distiller(None, student, _build_terms({task_loss: {}}))
    elif case.cached:  # the stored values come with the batch, as a ReplayDataset gives them
        teacher = create_model(group.teacher, num_classes=group.num_classes).to(device).eval()
        y = teacher_replay(teacher.requires_grad_(False), _build_terms(case.terms), x, y)
        y = y.to(device)  # as the step's input, already where the student is
        del teacher
        distiller = Distiller(None, student, _build_terms(case.terms), cached_teacher=True)
    else:
        teacher = create_model(group.teacher, num_classes=group.num_classes).to(device)
        terms = _build_terms(case.terms)
        distiller = Distiller(teacher, student, terms, example_input=x, **case.options)
    distiller.train()
    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def step() -> None:
        _, losses = distiller(x, y)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _time_group(
    cases: list[Case], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    steps = {c.name: build_step(c, device) for c in cases}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def peak_memory_mb(case: Case, device: torch.device) -> float:
    """The memory two steps of ``case`` need beyond its models and inputs, in MB."""
    import torch

    step = build_step(case, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(), step()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = peak_rss_kb()
    step(), step()
    return (peak_rss_kb() - before) / 1024


def peak_rss_kb() -> int:
    """This process's peak resident set in kB. Linux's ``VmHWM`` is per address space;
    ``ru_maxrss`` would carry the parent's peak over fork + exec."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1])
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # bytes on macOS


def _memory_in_subprocess(case: Case, device: torch.device, threads: int) -> float | None:
    command = [sys.executable, "-m", "kdforge", "bench", "--memory-of", f"{case.group}/{case.name}"]
    command += ["--device", str(device), "--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
        print(f"  memory of {case.name!r} failed: {out.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return float(out.stdout.strip().splitlines()[-1])


def _machine(device: torch.device) -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    try:
        load_average = list(os.getloadavg())
    except (AttributeError, OSError):  # not available on this platform
        load_average = []
    return {
        "device": str(device),
        "name": name or platform.machine(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average,
    }


def run_bench(
    groups: list[str],
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    threads: int | None = None,
    memory: bool = True,
) -> dict[str, Any]:
    """Time (and measure) every case of ``groups``; returns the results.json content."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    rows = []
    for group in groups:
        cases = [c for c in CASES if c.group == group]
        print(f"{group}: {len(cases)} cases x {warmup + repeats} rounds ...", file=sys.stderr)
        times = _time_group(cases, dev, repeats, warmup)
        median = {name: statistics.median(v) for name, v in times.items()}
        unavoidable = median["student"] + median["teacher forward"]
        spec = GROUPS[group]
        for case in cases:
            m = median[case.name]
            distilled = case.terms is not None
            peak = _memory_in_subprocess(case, dev, torch.get_num_threads()) if memory else None
            rows.append(
                {
                    "group": group,
                    "case": case.name,
                    "pair": f"{spec.teacher} -> {spec.student}",
                    "batch_size": spec.batch_size,
                    "image_size": list(spec.image_size),
                    "median_ms": 1e3 * m,
                    "min_ms": 1e3 * min(times[case.name]),
                    "images_per_s": spec.batch_size / m,
                    "vs_student": m / median["student"],
                    "overhead": m / unavoidable if distilled and not case.cached else None,
                    "peak_mb": peak,
                }
            )
    return {
        "machine": _machine(dev),
        "settings": {"repeats": repeats, "warmup": warmup, "groups": groups},
        "results": rows,
    }


def format_table(results: dict[str, Any]) -> str:
    """The results as one Markdown table."""
    lines = [
        "| group | case | median ms | images/s | vs student | overhead | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["results"]:
        overhead = f"{r['overhead']:.3f}" if r["overhead"] is not None else ""
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else ""
        lines.append(
            f"| {r['group']} | {r['case']} | {r['median_ms']:.1f} | {r['images_per_s']:.1f} | "
            f"{r['vs_student']:.3f} | {overhead} | {peak} |"
        )
    return "\n".join(lines)
