"""Presets: each task's pipelines compose the primitives as the reference recipes do."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kdforge.data import presets
from kdforge.data.det_transforms import (
    CAFFE_MEAN,
    DetRandomFlip,
    DetRandomResize,
    DetResize,
    rescale_boxes,
)
from kdforge.data.mixing import RandomErasing
from kdforge.data.transforms import Compose, Resize, ToTensor
from kdforge.errors import ConfigError


def _image(h: int, w: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(1, 256, (h, w, 3), dtype=np.uint8))


def _detection_sample(width: int, height: int) -> tuple[Image.Image, dict[str, Any]]:
    size = (height, width)
    target = {
        "boxes": torch.tensor([[5.0, 6.0, 30.0, 40.0]]),
        "labels": torch.zeros(1, dtype=torch.int64),
        "ignore_boxes": torch.zeros(0, 4),
        "image_id": 1,
        "orig_size": size,
        "img_shape": size,
        "scale_factor": (1.0, 1.0),
        "flip": False,
    }
    return _image(height, width), target


def test_cifar_and_imagenet() -> None:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train, val = presets.cifar_train(mean, std), presets.cifar_eval(mean, std)
    img = _image(32, 32)
    assert train(img).shape == val(img).shape == (3, 32, 32)
    torch.testing.assert_close(val(img), (ToTensor()(img) - 0.5) / 0.25)

    train, val = presets.imagenet_train(), presets.imagenet_eval()
    assert isinstance(train, Compose)
    img = _image(300, 400)
    assert train(img).shape == val(img).shape == (3, 224, 224)
    assert val.transforms[0].size == 256
    assert presets.imagenet_eval(112)(img).shape == (3, 112, 112)
    assert presets.imagenet_eval(112, resize=200).transforms[0].size == 200
    extras = presets.imagenet_train(64, "ta_wide", random_erase=0.5)
    assert [type(t).__name__ for t in extras.transforms][2] == "TrivialAugmentWide"
    assert isinstance(extras.transforms[-1], RandomErasing)
    with pytest.raises(ConfigError, match="auto_augment"):
        presets.imagenet_train(auto_augment="ra")


def test_classification_view_resizes_any_image_to_the_input_size() -> None:
    img = _image(45, 60)
    resize, normalize = presets.classification_view("imagefolder", {"image_size": 64})
    assert resize(img).size == (64, 64) and normalize is not None
    resize, normalize = presets.classification_view("digits", {"size": 16})
    assert resize(img).size == (16, 16) and normalize is None
    resize, normalize = presets.classification_view("cifar10", {})
    assert isinstance(resize, Resize) and normalize.mean[0] == pytest.approx(0.4914)


def test_detection_and_mapping_back_to_the_original() -> None:
    image, target = _detection_sample(64, 48)
    train = presets.detection_train((100, 60), train_scales=[(100, 40), (100, 60)])
    assert isinstance(train.transforms[0], DetRandomResize)
    assert isinstance(presets.detection_train((100, 60)).transforms[0], DetResize)
    tensor, t = presets.detection_eval((100, 60))(image, target)
    assert tensor.shape == (3, 60, 80) and t["scale_factor"] == (1.25, 1.25)
    torch.testing.assert_close(rescale_boxes(t["boxes"], t), target["boxes"])
    resized, t = DetResize((100, 60))(image, target)
    _, t = DetRandomFlip(1.0)(resized, t)
    torch.testing.assert_close(rescale_boxes(t["boxes"], t), target["boxes"])


def test_caffe_normalize_is_bgr_minus_the_detectron_mean() -> None:
    # mmdetection's FCOS: Normalize(mean=[102.9801, 115.9465, 122.7717], std=1, to_rgb=False)
    image, target = _detection_sample(8, 6)
    tensor, _ = presets.detection_eval((8, 6), normalize="caffe")(image, target)
    rgb = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(tensor, rgb.flip(0) - torch.tensor(CAFFE_MEAN)[:, None, None])
    with pytest.raises(ConfigError, match="normalize must be"):
        presets.detection_train(normalize="tf")


def test_segmentation_crops_and_pads_training_and_keeps_validation_whole() -> None:
    ys, xs = np.mgrid[0:24, 0:48]
    image = Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8))
    mask = Image.fromarray(((xs + 2 * ys) % 5).astype(np.uint8))
    train = presets.segmentation_train(crop_size=(16, 24), scale=(48, 24))
    torch.manual_seed(0)
    for _ in range(5):
        tensor, labels = train(image, mask)
        assert tensor.shape == (3, 16, 24) and labels.shape == (16, 24)
    tensor, labels = presets.segmentation_eval()(image, mask)
    assert tensor.shape == (3, 24, 48)
    assert torch.equal(labels, torch.from_numpy(np.array(mask)).long())
    names = [type(t).__name__ for t in presets.segmentation_train(photometric=False).transforms]
    assert "PhotoMetricDistortion" not in names and names[-1] == "SegPad"
