"""Prefixed model names without their library: one clear error, raised before any work.
(tests/interop/ covers the models themselves, in the environment that has the libraries.)"""

from __future__ import annotations

import sys

import pytest
import torch

from kdforge.errors import MissingDependencyError
from kdforge.models import create_model, get_model_info
from kdforge.models.external import logits_of, split_name


@pytest.mark.parametrize(
    ("name", "package"),
    [("timm/resnet18", "timm"), ("torchvision/resnet18", "torchvision"), ("hf/x", "transformers")],
)
def test_a_missing_library_is_named(monkeypatch, tmp_path, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    if name.startswith("hf/"):
        (tmp_path / "config.json").write_text("{}")
        name = f"hf/{tmp_path}"
    for call in (create_model, get_model_info):
        with pytest.raises(MissingDependencyError, match=f"needs {package}.*pip install {package}"):
            call(name)


def test_only_known_prefixes_are_external():
    assert split_name("timm/vit_base_patch16_224") == ("timm", "vit_base_patch16_224")
    assert split_name("hf/models/my-vit") == ("hf", "models/my-vit")
    assert split_name("resnet8x4") is None and split_name("mine/resnet") is None


def test_logits_of_takes_the_logits_entry_only():
    logits = torch.randn(2, 3)
    assert logits_of({"logits": logits, "hidden_states": None}) is logits
    assert logits_of(logits) is logits
    other = {"scores": logits}
    assert logits_of(other) is other
