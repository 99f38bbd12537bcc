"""``kdforge demo``, shortened: three real runs, the table, results.json and curves.png."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kdforge.commands.demo.classification import DemoRun, demo_overrides, format_table, run_demo
from kdforge.errors import DataError


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One short demo (students 1 epoch, teacher 3 so that it passes check_teacher)."""
    out = tmp_path_factory.mktemp("demo")
    results = run_demo(out, epochs=1, teacher_epochs=3, seed=0)
    return out, results


def test_results_have_three_runs_with_accuracies(demo_dir):
    out, results = demo_dir
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    runs = saved["runs"]
    assert [run["role"] for run in runs] == ["teacher", "student", "kd"]
    assert [run["model"] for run in runs] == ["resnet14", "resnet8", "resnet8"]
    for run in runs:
        assert 0.0 <= run["final_top1"] <= run["best_top1"] <= 100.0
        assert run["params"] > 0 and run["seconds"] > 0
        assert run["val_top1"][-1] == pytest.approx(run["final_top1"])
    assert [len(run["epochs"]) for run in runs] == [3, 1, 1]
    assert runs[0]["params"] > runs[1]["params"] == runs[2]["params"]
    assert saved["kd_gain_final"] == pytest.approx(runs[2]["final_top1"] - runs[1]["final_top1"])
    assert saved["data"]["train_images"] + saved["data"]["val_images"] == 1797


def test_runs_went_through_the_engine(demo_dir):
    out, results = demo_dir
    for role in ("teacher", "student", "kd"):
        run_dir = out / role
        for name in ("best.pt", "last.pt", "config.yaml", "log.jsonl"):
            assert (run_dir / name).is_file(), f"{role}/{name}"
    kd_config = (out / "kd" / "config.yaml").read_text()
    assert str(out / "teacher" / "best.pt") in kd_config
    kd_log = [json.loads(line) for line in (out / "kd" / "log.jsonl").read_text().splitlines()]
    teacher_top1 = next(r["top1"] for r in kd_log if r["kind"] == "teacher")
    assert teacher_top1 == pytest.approx(results["runs"][0]["best_top1"])  # best.pt was loaded


def test_curves_png_is_a_real_image(demo_dir):
    out, _ = demo_dir
    png = out / "curves.png"
    assert png.stat().st_size > 10_000
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.width >= 600 and image.height >= 300
        grey = np.asarray(image.convert("L"))
    assert len(np.unique(grey)) > 10 and grey.min() < 100 < grey.max()  # lines were drawn


def test_table_lists_three_runs_and_the_gain(demo_dir):
    _, results = demo_dir
    table = format_table([DemoRun(**run) for run in results["runs"]])
    lines = table.splitlines()
    assert any(line.startswith("teacher") for line in lines)
    assert any(line.startswith("student alone") for line in lines)
    assert any(line.startswith("KD student") for line in lines)
    assert "KD gain over the student alone" in lines[-1]


def test_refuses_to_delete_a_foreign_folder(tmp_path):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a kdforge run"):
        run_demo(tmp_path, epochs=1)
    assert (tmp_path / "student" / "notes.txt").is_file()


def test_rerun_starts_fresh_and_reproduces_the_numbers(demo_dir, capsys):
    out, first = demo_dir
    (out / "teacher" / "marker").write_text("old run")
    again = run_demo(out, epochs=1, teacher_epochs=3, seed=0)
    assert "Starting fresh: removed the previous runs (teacher, student, kd)" in (
        capsys.readouterr().out
    )
    assert not (out / "teacher" / "marker").exists()
    assert (out / "kd" / "best.pt").is_file()
    for a, b in zip(first["runs"], again["runs"], strict=True):
        assert (a["val_top1"], a["train_ce"]) == (b["val_top1"], b["train_ce"])


def test_overrides_are_a_valid_recipe():
    from kdforge.config import load_config

    cfg = load_config(
        None,
        demo_overrides(
            "kd",
            "runs/demo",
            30,
            0,
            model="resnet8",
            batch_size=32,
            teacher="resnet14",
            teacher_checkpoint="runs/demo/teacher/best.pt",
        ),
    )
    assert cfg.loss.ce.weight == 0.1 and cfg.loss.kd.weight == 0.9
    assert cfg.loss.kd.temperature == 4.0 and cfg.train.check_teacher
    assert cfg.data.num_workers == 0 and cfg.data.name == "digits"
    alone = load_config(None, demo_overrides("student", "x", 30, 0, model="resnet8", batch_size=32))
    assert dict(alone.loss) == {"ce": {"weight": 1.0}} and alone.teacher.name is None
    with pytest.raises(ValueError, match="teacher"):
        demo_overrides("kd", "x", 1, 0, model="resnet8", batch_size=8)
