"""torch.compile of student and teacher: same losses, taps still fire, eager on failure."""

from __future__ import annotations

import shutil

import pytest
import torch

from kdforge import create_model
from kdforge.config import load_config
from kdforge.distiller import Distiller
from kdforge.engine.build import build_trainer
from kdforge.losses import CrossEntropyLoss, FitNetLoss, KDLoss


def _distiller(teacher: bool = True) -> tuple[Distiller, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    student = create_model("resnet8", num_classes=10)
    if not teacher:
        return Distiller(None, student, {"ce": CrossEntropyLoss()}).train(), x, y
    terms = {"ce": CrossEntropyLoss(), "kd": KDLoss(), "fit": FitNetLoss("layer2", "layer2")}
    model = create_model("resnet14", num_classes=10)
    return Distiller(model, student, terms, example_input=x).train(), x, y


def _step(distiller: Distiller, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    _, losses = distiller(x, y)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in distiller.student.named_parameters()}
    distiller.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()} | grads


def test_compiled_models_give_the_same_losses_and_gradients() -> None:
    # aot_eager traces with dynamo and AOTAutograd, as inductor does, without a C++ build
    distiller, x, y = _distiller()
    eager = _step(distiller, x, y)
    distiller.compile_models(backend="aot_eager")
    assert set(distiller.compiled_models) == {"student", "teacher"}
    compiled = _step(distiller, x, y)
    assert set(distiller.compiled_models) == {"student", "teacher"}  # no fallback happened
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-5, atol=1e-6)
    assert "conv1.weight" in distiller.student.state_dict()  # names unchanged


def test_a_failed_compilation_warns_and_runs_eagerly() -> None:
    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    distiller, x, y = _distiller()
    eager = _step(distiller, x, y)
    distiller.compile_models(backend=broken)
    with pytest.warns(RuntimeWarning, match="torch.compile of the") as record:
        fallback = _step(distiller, x, y)
    assert sorted(str(w.message).split()[3] for w in record) == ["student", "teacher"]
    assert distiller.compiled_models == []
    for name, value in eager.items():
        torch.testing.assert_close(fallback[name], value)


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on CPU")
def test_inductor_compiles_a_zoo_student() -> None:
    distiller, x, y = _distiller(teacher=False)  # one small model: ~30 s to compile on CPU
    eager = _step(distiller, x, y)
    distiller.compile_models()
    compiled = _step(distiller, x, y)
    assert "student" in distiller.compiled_models
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-5)


def test_train_compile_compiles_both_models(tiny_overrides) -> None:
    overrides = ["teacher.name=resnet8", "student.name=resnet8", "train.compile=true"]
    overrides += ["loss={ce: {weight: 0.1}, kd: {weight: 0.9}}"]
    trainer = build_trainer(load_config(None, tiny_overrides + overrides), "test")
    assert set(trainer.distiller.compiled_models) == {"student", "teacher"}
