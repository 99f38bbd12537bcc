"""``export --format onnx``: the graph runs in onnxruntime and matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdforge.cli import main
from kdforge.models import create_model
from kdforge.tools.export import export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _checkpoint(path, name, task, **kwargs):
    model = create_model(name, num_classes=5, **kwargs).eval()
    config = {"task": task, "student": {"name": name, "kwargs": kwargs}}
    state = {"student": model.state_dict(), "student_name": name, "num_classes": 5}
    torch.save({**state, "config": config}, path)
    return model


def test_classifier_through_the_cli_with_any_batch_size(tmp_path, capsys):
    model = _checkpoint(tmp_path / "best.pt", "resnet8", "classification")
    out = tmp_path / "student.onnx"
    main(["export", str(tmp_path), "--out", str(out), "--format", "onnx"])
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_segmentor(tmp_path):
    _checkpoint(tmp_path / "last.pt", "pspnet_r18", "segmentation")
    out, error = export_onnx(tmp_path / "last.pt", tmp_path / "seg.onnx", input_size=(3, 64, 64))
    assert out.is_file() and error < 1e-3


def test_detector_is_refused(tmp_path):
    _checkpoint(tmp_path / "best.pt", "gfl_r18_fpn", "detection")
    with pytest.raises(ValueError, match="classification and segmentation"):
        export_onnx(tmp_path, tmp_path / "det.onnx")
