"""``kdforge train`` prints the last evaluation's numbers, whatever else it holds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from kdforge.cli import main


def test_done_line_skips_non_numbers(monkeypatch, tmp_path, capsys):
    """Segmentation's evaluation holds a per-class ``table`` string besides the numbers."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: segmentation\nstudent: {name: pspnet_r18}\n")
    final = {"mIoU": 48.6, "aAcc": 89.31, "count": 4096, "table": "class  IoU\nstar  39.8"}
    trainer = SimpleNamespace(
        fit=lambda: final, run_dir=Path("runs/x"), dist=SimpleNamespace(is_main=True)
    )
    monkeypatch.setattr("kdforge.engine.build.build_trainer", lambda cfg, **kw: trainer)
    main(["train", str(recipe)])
    assert capsys.readouterr().out == f"done: {Path('runs/x')} mIoU=48.60 aAcc=89.31\n"
