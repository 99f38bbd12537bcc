"""Export: ``.safetensors`` weights that load back, and ONNX graphs that match PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdforge.cli import main
from kdforge.engine.export import export_onnx, export_student, find_checkpoint
from kdforge.errors import CheckpointError, ConfigError
from kdforge.models import create_model


def _checkpoint(path, name, task, **kwargs):
    model = create_model(name, num_classes=5, **kwargs).eval()
    config = {"task": task, "student": {"name": name, "kwargs": kwargs}}
    state = {"student": model.state_dict(), "student_name": name, "num_classes": 5}
    torch.save({**state, "config": config}, path)
    return model


@pytest.fixture
def ort():
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def test_safetensors_load_back_and_a_missing_run_is_named(tmp_path):
    model = _checkpoint(tmp_path / "last.pt", "resnet8", "classification")
    assert find_checkpoint(tmp_path) == tmp_path / "last.pt"  # no best.pt: the last one
    out = export_student(tmp_path, tmp_path / "student.safetensors")
    loaded = create_model("resnet8", num_classes=5, pretrained=out).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(CheckpointError, match="holds no best.pt or last.pt"):
        find_checkpoint(tmp_path / "empty")


def test_classifier_through_the_cli_with_any_batch_size(ort, tmp_path, capsys):
    model = _checkpoint(tmp_path / "best.pt", "resnet8", "classification")
    out = tmp_path / "student.onnx"
    main(["export", str(tmp_path), "--out", str(out), "--format", "onnx"])
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_segmentor(ort, tmp_path):
    _checkpoint(tmp_path / "last.pt", "pspnet_r18", "segmentation")
    out, error = export_onnx(tmp_path / "last.pt", tmp_path / "seg.onnx", input_size=(3, 64, 64))
    assert out.is_file() and error < 1e-3


def test_detector_is_refused(ort, tmp_path):
    _checkpoint(tmp_path / "best.pt", "gfl_r18_fpn", "detection")
    with pytest.raises(ConfigError, match="classification and segmentation"):
        export_onnx(tmp_path, tmp_path / "det.onnx")
