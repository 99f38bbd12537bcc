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
        fit=lambda: final,
        run_dir=Path("runs/x"),
        dist=SimpleNamespace(is_main=True),
        hook=lambda kind: None,
    )
    monkeypatch.setattr("kdforge.engine.build.build_trainer", lambda cfg, **kw: trainer)
    main(["train", str(recipe)])
    assert capsys.readouterr().out == f"done: {Path('runs/x')} mIoU=48.60 aAcc=89.31\n"


def test_the_reported_number_is_the_one_the_source_publishes():
    from kdforge.commands.train import format_summary

    summary = {"metric": "AP", "final": 0.40, "best": 0.41, "best_epoch": 10}
    assert format_summary(summary | {"report": "final", "reported": 0.40}) == (
        "reported AP 0.4 (final, as the recipe's source reports; best 0.41 at epoch 10)"
    )
    assert format_summary(summary | {"report": "best", "reported": 0.41}).startswith(
        "reported AP 0.41 (best"
    )
