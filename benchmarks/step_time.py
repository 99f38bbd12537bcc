"""What distillation costs over its parts: KD step vs student step + teacher forward.

Measures, in one process on the same inputs and interleaved round by round (so drift
in machine speed hits all three alike), the median time of

* a student-only training step (CE, forward + backward + SGD step),
* a teacher forward pass (eval mode, no autograd),
* a KD training step through :class:`kdforge.Distiller` (CE 0.1 + KD 0.9, T=4),

and prints ``overhead = kd_step / (student_step + teacher_forward)``: what the
library's wiring (hooks, loss terms, the dict of losses) adds on top of the unavoidable
work. Usage::

    python benchmarks/step_time.py                      # resnet32x4 -> resnet8x4, batch 64
    python benchmarks/step_time.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from kdforge import Distiller, create_model
from kdforge.losses import CrossEntropyLoss, KDLoss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    teacher = create_model(args.teacher).to(device).eval().requires_grad_(False)
    student = create_model(args.student).to(device)
    kd_student = create_model(args.student).to(device)
    kd_student.load_state_dict(student.state_dict())
    distiller = Distiller(teacher, kd_student, {"ce": CrossEntropyLoss(0.1), "kd": KDLoss(0.9)})
    distiller.train()
    opt_student = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    opt_kd = torch.optim.SGD(
        [p for p in distiller.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (args.batch_size,), device=device)

    def student_step() -> None:
        loss = F.cross_entropy(student(x), y)
        opt_student.zero_grad(set_to_none=True)
        loss.backward()
        opt_student.step()

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher(x)

    def kd_step() -> None:
        _, losses = distiller(x, y)
        loss = sum(losses.values())
        opt_kd.zero_grad(set_to_none=True)
        loss.backward()
        opt_kd.step()

    jobs = {"student_step": student_step, "teacher_forward": teacher_forward, "kd_step": kd_step}
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for round_ in range(args.warmup + args.repeats):
        for name, job in jobs.items():
            _sync(device)
            start = time.perf_counter()
            job()
            _sync(device)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(values) for name, values in times.items()}
    overhead = median["kd_step"] / (median["student_step"] + median["teacher_forward"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"{args.teacher} -> {args.student}, batch {args.batch_size}, {args.repeats} rounds, "
        f"device {device} ({where or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, value in median.items():
        spread = f"min {min(times[name]) * 1e3:.1f}, max {max(times[name]) * 1e3:.1f}"
        print(f"  {name:<16} median {value * 1e3:8.1f} ms  ({spread})")
    print(f"overhead = kd_step / (student_step + teacher_forward) = {overhead:.3f}")
    fastest = {name: min(values) for name, values in times.items()}
    floor = fastest["kd_step"] / (fastest["student_step"] + fastest["teacher_forward"])
    print(f"same ratio of the fastest rounds (less sensitive to a busy machine) = {floor:.3f}")


if __name__ == "__main__":
    main()
