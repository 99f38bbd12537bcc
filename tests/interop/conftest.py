"""Fixtures of the interop suite: a tiny Hugging Face image classifier in a local folder."""

from __future__ import annotations

import pytest
import torch
import transformers


def save_tiny_vit(folder, num_labels: int, seed: int = 0):
    """A 2-layer ViT for 32x32 images (4x4 patches of 8), written by ``save_pretrained``."""
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config)
    model.save_pretrained(folder)
    return model


@pytest.fixture
def hf_folder(tmp_path):
    """A folder holding a tiny ViT classifier of 10 labels (the generated CIFAR-10's)."""
    folder = tmp_path / "hf-vit"
    save_tiny_vit(folder, num_labels=10)
    return folder
