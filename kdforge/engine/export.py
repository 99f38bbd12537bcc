"""Export the student of a run: plain ``.safetensors`` weights (connectors dropped), or an
ONNX graph of a classification or segmentation student, checked with onnxruntime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from kdforge.engine.checkpoint import load_checkpoint
from kdforge.errors import CheckpointError, ConfigError, MissingDependencyError
from kdforge.models import create_model, get_model_info
from kdforge.models.loading import model_metadata, save_weights

__all__ = ["export_onnx", "export_student", "find_checkpoint"]

ONNX_TASKS = ("classification", "segmentation")


def find_checkpoint(run: str | Path, which: str = "best") -> Path:
    """``RUN_DIR/{which}.pt`` (falling back to ``last.pt``), or ``run`` itself if a file."""
    run = Path(run)
    if run.is_file():
        return run
    for name in (f"{which}.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise CheckpointError(f"{run} holds no {which}.pt or last.pt; is it a kdforge run folder?")


def output_path(out: str | Path, option: str = "--out") -> Path:
    """``out`` with its folder created; a path under a file or a folder is a ConfigError."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{option} {out} is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write {option} {out} ({err.strerror}: {out.parent})") from None
    return out


def export_student(run: str | Path, out: str | Path, which: str = "best") -> Path:
    """Write the student weights of ``run`` to ``out`` (safetensors) and return its path.

    The file loads back with ``kdforge.load_model(out)``: the model name, number of classes
    and builder keywords (the recipe's ``student.kwargs``) are stored in its metadata
    (:func:`kdforge.models.loading.model_metadata`, as ``kdforge convert`` does), with the
    epoch and metrics.
    """
    checkpoint = load_checkpoint(find_checkpoint(run, which))
    kwargs = checkpoint.get("config", {}).get("student", {}).get("kwargs") or {}
    metadata = model_metadata(
        str(checkpoint.get("student_name", "")),
        checkpoint.get("num_classes"),
        kwargs,
        epoch=str(checkpoint.get("epoch", "")),
        metrics=checkpoint.get("metrics", {}),
    )
    return save_weights(checkpoint["student"], output_path(out), metadata)


def export_onnx(
    run: str | Path,
    out: str | Path,
    which: str = "best",
    input_size: Sequence[int] | None = None,
    atol: float = 1e-4,
) -> tuple[Path, float]:
    """Write the student of ``run`` as ONNX and check it against PyTorch with onnxruntime.

    The graph comes from ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` plus
    onnxscript; the legacy TorchScript exporter cannot export PSPNet's adaptive pooling),
    weights embedded in the one file, the batch axis dynamic: input ``images (N, C, H, W)``
    (normalised as in training), output ``logits`` (``(N, K)``, or ``(N, K, h, w)`` for a
    segmentor). The check runs both on the same random batch of 2.

    Args:
        run: a run folder or checkpoint file (which holds the model name and its kwargs).
        out: the ``.onnx`` path.
        which: ``best`` or ``last``.
        input_size: ``(C, H, W)`` of the graph; default the zoo model's own.
        atol: the largest absolute difference accepted, relative to the outputs' scale.

    Returns:
        The path and the largest absolute difference between onnxruntime and PyTorch.

    Raises:
        MissingDependencyError: onnxscript or onnxruntime is missing (``pip install
            kdforge[onnx]``).
        ConfigError: a detection student.
        CheckpointError: a checkpoint that does not name its student.
        ValueError: outputs that differ by more than ``atol``.
    """
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as err:
        raise MissingDependencyError(
            f"ONNX export needs {err.name}: pip install 'kdforge[onnx]'"
        ) from None
    checkpoint = load_checkpoint(find_checkpoint(run, which))
    config = checkpoint.get("config") or {}
    task = config.get("task", "classification")
    if task not in ONNX_TASKS:
        raise ConfigError(
            f"ONNX export covers {' and '.join(ONNX_TASKS)} students; this run is {task}"
        )
    name = checkpoint.get("student_name") or config.get("student", {}).get("name")
    if not name:
        raise CheckpointError(f"{run}: the checkpoint does not name its student model")
    kwargs = (config.get("student") or {}).get("kwargs") or {}
    model = create_model(name, num_classes=checkpoint.get("num_classes"), **kwargs)
    model.load_state_dict(checkpoint["student"])
    model.eval()
    size = tuple(input_size or get_model_info(name).input_size)
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    out = output_path(out)
    torch.onnx.export(
        model,
        (x,),
        str(out),
        dynamo=True,
        external_data=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        expected = model(x)
    error = (got - expected).abs().max().item()
    if error > atol * max(1.0, expected.abs().max().item()):
        raise ValueError(f"{out}: onnxruntime differs from PyTorch by {error:.3g} (> {atol})")
    return out, error
