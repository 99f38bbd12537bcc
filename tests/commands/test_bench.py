"""``kdforge bench``: every case builds and steps; the table and results.json are written."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kdforge.cli import main
from kdforge.commands import bench

SMALL = {  # the groups' models on the smallest inputs they accept
    "cifar": {"batch_size": 2},
    "imagenet": {"batch_size": 1},
    "coco": {"batch_size": 1, "image_size": (128, 128)},
    "coco-two-stage": {"batch_size": 1, "image_size": (128, 128)},
    "coco-swin": {"batch_size": 1, "image_size": (128, 128)},
    "coco-dino": {"batch_size": 1, "image_size": (256, 256)},  # 1360 positions >= 900 queries
}


@pytest.fixture
def small_groups(monkeypatch):
    groups = {k: dataclasses.replace(g, **SMALL[k]) for k, g in bench.GROUPS.items()}
    monkeypatch.setattr(bench, "GROUPS", groups)


@pytest.mark.parametrize("case", bench.CASES, ids=lambda c: f"{c.group}/{c.name}")
def test_every_case_runs_a_step(case, small_groups) -> None:
    step = bench.build_step(case, torch.device("cpu"))
    step()


def test_kdforge_bench_prints_a_table_and_writes_results(
    small_groups, monkeypatch, tmp_path, capsys
) -> None:
    cases = [c for c in bench.CASES if c.group == "cifar"][:3]  # student, teacher, KD
    monkeypatch.setattr(bench, "CASES", cases)
    out = tmp_path / "results.json"
    main(
        [
            "bench",
            "--groups",
            "cifar",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--no-memory",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "| cifar | KD |" in printed and "overhead" in printed
    results = json.loads(out.read_text())
    assert {"machine", "settings", "results"} <= set(results)
    kd = next(r for r in results["results"] if r["case"] == "KD")
    assert kd["overhead"] > 0 and kd["vs_student"] > 0 and kd["peak_mb"] is None


def test_peak_memory_is_measured(small_groups) -> None:
    case = bench.CASES[0]  # cifar student
    assert bench.peak_memory_mb(case, torch.device("cpu")) >= 0
