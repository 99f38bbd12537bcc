"""CanKD's attention product: official affinity order vs the reordered one (CPU or CUDA).

CanKD has no softmax, so ``y = (θᵀφ / M) gᵀ`` (official: an ``HW × M`` affinity matrix)
equals ``θᵀ (φ gᵀ / M)`` (reordered: a ``Ci × Ci`` matrix). For each order this times,
on an FPN-P3-sized level, forward + backward of

* ``attention``: the product alone (:func:`~kdforge.losses.cankd.cross_nonlocal_attention`
  on ``θ`` of ``N × Ci × H × W`` and pooled ``φ``, ``g`` of ``N × Ci × H/2 × W/2``, all
  requiring grad), and
* ``loss``: one whole :class:`~kdforge.losses.cankd.CanKDLevelLoss` (its 1×1 convolutions,
  pooling, BN, instance norm and MSE included; student map requires grad, teacher map
  does not, as in training),

and measures the peak memory of each:

* **time**: median (and minimum) of ``--repeats`` rounds after ``--warmup`` untimed ones;
* **peak memory**, CPU: each case runs in its own fresh subprocess; the resident-set
  high-water mark (Linux ``VmHWM``, :func:`kdforge.commands.bench.peak_rss_kb`) is read after the
  inputs and the module exist and again after the first forward + backward; the difference is what
  that step needed on top (allocator caching and the one-off thread-pool start-up
  included, a few MB). CUDA: ``torch.cuda.max_memory_allocated`` over the same step minus
  the memory allocated before it.

Usage::

    python benchmarks/cankd_product.py                  # 2x256x100x168, 2 threads
    python benchmarks/cankd_product.py --repeats 9 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from kdforge.commands.bench import peak_rss_kb
from kdforge.losses.cankd import PRODUCTS, CanKDLevelLoss, cross_nonlocal_attention

SCOPES = ("attention", "loss")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_kb() * 1024


def _inputs(scope: str, product: str, args: argparse.Namespace, device: torch.device):
    """``(module, inputs that require grad, call)`` of one case."""
    torch.manual_seed(0)
    shape = (args.batch, args.channels, args.height, args.width)
    if scope == "attention":
        ci = args.channels // 2
        query = torch.randn(args.batch, ci, args.height, args.width, device=device)
        pooled = (args.batch, ci, args.height // 2, args.width // 2)
        key, value = torch.randn(pooled, device=device), torch.randn(pooled, device=device)
        leaves = [t.requires_grad_() for t in (query, key, value)]
        return None, leaves, lambda: cross_nonlocal_attention(*leaves, product).square().mean()
    loss_fn = CanKDLevelLoss(args.channels, weight=10.0, product=product).to(device)
    nn.init.normal_(loss_fn.non_local_att.W[1].weight, std=0.1)  # attention branch on
    student = torch.randn(shape, device=device, requires_grad=True)
    teacher = torch.randn(shape, device=device)
    return loss_fn, [student], lambda: loss_fn(student, teacher)


def measure(scope: str, product: str, args: argparse.Namespace) -> dict[str, float]:
    """Peak extra memory of the first forward + backward, then the timed rounds."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    module, leaves, call = _inputs(scope, product, args, device)

    def step() -> None:
        call().backward()
        for leaf in leaves:
            leaf.grad = None
        if module is not None:
            module.zero_grad(set_to_none=True)
        _sync(device)

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _peak_bytes(device)
    step()
    peak = _peak_bytes(device) - before
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--height", type=int, default=100)
    parser.add_argument("--width", type=int, default=168)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs=2, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(*args.only, args)))
        return

    shape = f"{args.batch}x{args.channels}x{args.height}x{args.width}"
    print(
        f"CanKD forward + backward, {shape}, {args.device}, {args.threads} threads, "
        f"{args.repeats} rounds after {args.warmup} + 1; torch {torch.__version__}, "
        f"{platform.machine()}, {platform.processor() or platform.platform()}"
    )
    results = {}
    for scope in SCOPES:
        for product in PRODUCTS:  # one fresh process each: a clean high-water mark
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--only", scope, product],
                check=True,
                capture_output=True,
                text=True,
            )
            results[scope, product] = json.loads(out.stdout.strip().splitlines()[-1])
    print("\n| scope | order | median | min | peak extra memory |\n|---|---|---|---|---|")
    for (scope, product), r in results.items():
        print(
            f"| {scope} | {product} | {r['median_s'] * 1e3:.0f} ms | {r['min_s'] * 1e3:.0f} ms "
            f"| {r['peak_mib']:.0f} MiB |"
        )
    for scope in SCOPES:
        fast, slow = results[scope, "reordered"], results[scope, "affinity"]
        print(
            f"{scope}: affinity / reordered time {slow['median_s'] / fast['median_s']:.1f}x, "
            f"memory {slow['peak_mib'] / max(fast['peak_mib'], 1e-9):.1f}x"
        )


if __name__ == "__main__":
    main()
