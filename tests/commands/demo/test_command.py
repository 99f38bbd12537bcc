"""``kdforge demo --task ...`` runs the task's demo with the command's defaults."""

from __future__ import annotations

from kdforge.cli import main


def test_each_task_runs_its_demo(monkeypatch):
    calls = []
    for module, function in [
        ("classification", "run_demo"),
        ("detection", "run_detection_demo"),
        ("segmentation", "run_segmentation_demo"),
    ]:
        monkeypatch.setattr(
            f"kdforge.commands.demo.{module}.{function}",
            lambda module=module, **kw: calls.append((module, kw)),
        )
    main(["demo", "--task", "detection", "--epochs", "2"])
    main(["demo", "--seed", "3"])
    main(["demo", "--task", "segmentation", "--epochs", "2", "--seed", "1", "--out", "x"])
    assert calls == [
        ("detection", {"out_dir": "runs/demo_detection", "epochs": 2, "seed": 0}),
        ("classification", {"out_dir": "runs/demo", "epochs": None, "seed": 3}),
        ("segmentation", {"out_dir": "x", "epochs": 2, "seed": 1}),
    ]
