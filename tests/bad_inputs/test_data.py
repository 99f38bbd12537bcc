"""A catalogue of data a user can get wrong: each is a DataError or ConfigError (never an
IndexError or a Pillow traceback) whose message names the file or key and the fix, raised
when the data set is built wherever the problem shows without decoding every image.

Each case returns ``(trigger, named)``: calling ``trigger`` must raise the case's error,
whose message contains ``named``. Cases marked "(load)" show only when the sample is decoded
(``kdforge check-data`` finds them all up front); the rest fail at construction.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from kdforge.data import build_datasets, build_segmentation_datasets, write_fake_cifar
from kdforge.data.bad_samples import SampleError
from kdforge.data.cityscapes import Cityscapes, SegmentationFolder
from kdforge.data.coco import CocoDetection
from kdforge.errors import ConfigError, DataError

Case = Callable[[Path], tuple[Callable[[], Any], str]]
CASES: dict[str, tuple[type[Exception], Case]] = {}


def case(name: str, error: type[Exception] = DataError) -> Callable[[Case], Case]:
    def register(setup: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = (error, setup)
        return setup

    return register


def _image(path: Path, size: tuple[int, int] = (6, 4), mode: str = "RGB", value: Any = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def _imagenet(root: Path, train: tuple[str, ...] = ("a", "b"), val: tuple[str, ...] = ("a", "b")):
    for split, classes in (("train", train), ("val", val)):
        for cls in classes:
            _image(root / split / cls / "0.png")
    return root


# --- classification: image folders ------------------------------------------------------
@case("imagefolder: data.root does not exist")
def _(tmp: Path):
    return lambda: build_datasets("imagefolder", tmp / "nope"), str(tmp / "nope")


@case("imagefolder: data.root is a split folder (no train/ inside)")
def _(tmp: Path):
    _image(tmp / "a" / "0.png")
    return lambda: build_datasets("imagefolder", tmp), "data.root"


@case("imagefolder: images directly in train/, no class folders")
def _(tmp: Path):
    _imagenet(tmp)
    for cls in ("a", "b"):
        (tmp / "train" / cls / "0.png").rename(tmp / "train" / f"{cls}.png")
        (tmp / "train" / cls).rmdir()
    return lambda: build_datasets("imagefolder", tmp), str(tmp / "train")


@case("imagefolder: empty val/ folder")
def _(tmp: Path):
    _imagenet(tmp, val=())
    (tmp / "val").mkdir()
    return lambda: build_datasets("imagefolder", tmp), str(tmp / "val")


@case("imagefolder: a class folder without images")
def _(tmp: Path):
    _imagenet(tmp)
    (tmp / "train" / "c").mkdir()
    (tmp / "train" / "c" / "notes.txt").write_text("")
    return lambda: build_datasets("imagefolder", tmp), ": c."


@case("imagefolder: class folders differ between train and val")
def _(tmp: Path):
    _imagenet(tmp, val=("a", "c"))
    return lambda: build_datasets("imagefolder", tmp), "b, c"


@case("imagefolder: a zero-byte image (load)")
def _(tmp: Path):
    _imagenet(tmp)
    (tmp / "train" / "a" / "1.jpg").write_bytes(b"")
    train, _ = build_datasets("imagefolder", tmp, image_size=4)
    return lambda: train[1], str(tmp / "train" / "a" / "1.jpg")


@case("imagefolder: a web page saved as .jpg (load)")
def _(tmp: Path):
    _imagenet(tmp)
    (tmp / "train" / "a" / "1.jpg").write_text("<!DOCTYPE html><html>Access denied</html>")
    train, _ = build_datasets("imagefolder", tmp, image_size=4)
    return lambda: train[1], str(tmp / "train" / "a" / "1.jpg")


@case("imagefolder: a truncated JPEG (load)")
def _(tmp: Path):
    _imagenet(tmp)
    good = Image.effect_noise((64, 64), 40).convert("RGB")
    good.save(tmp / "full.jpg")
    data = (tmp / "full.jpg").read_bytes()
    (tmp / "train" / "a" / "1.jpg").write_bytes(data[: len(data) // 3])
    train, _ = build_datasets("imagefolder", tmp, image_size=4)
    return lambda: train[1], str(tmp / "train" / "a" / "1.jpg")


@case("data.root unset", ConfigError)
def _(tmp: Path):
    return lambda: build_datasets("imagefolder", None), "data.root"


@case("an unknown data set name", ConfigError)
def _(tmp: Path):
    return lambda: build_datasets("imagenet", tmp), "'imagenet'"


@case("an unknown data option", ConfigError)
def _(tmp: Path):
    return lambda: build_datasets("imagefolder", tmp, img_size=32), "img_size"


@case("an unknown on_bad_sample", ConfigError)
def _(tmp: Path):
    _imagenet(tmp)
    return lambda: build_datasets("imagefolder", tmp, on_bad_sample="warn"), "data.on_bad_sample"


@case("cifar: a missing batch file")
def _(tmp: Path):
    write_fake_cifar(tmp, "cifar10", num_train=10, num_test=10)
    next(tmp.rglob("data_batch_3")).unlink()
    return lambda: build_datasets("cifar10", tmp), "data_batch_3"


@case("cifar: a file that is not a pickle")
def _(tmp: Path):
    write_fake_cifar(tmp, "cifar10", num_train=10, num_test=10)
    next(tmp.rglob("test_batch")).write_bytes(pickle.dumps([1, 2])[:5])
    return lambda: build_datasets("cifar10", tmp), "test_batch"


@case("task detection on a classification data set", ConfigError)
def _(tmp: Path):
    from kdforge.engine.tasks import get_task

    cfg = OmegaConf.create({"name": "cifar10", "root": str(tmp), "options": {}})
    return lambda: get_task("detection").build_datasets(cfg), "data.name=coco"


# --- detection: COCO ----------------------------------------------------------------------
def _coco(tmp: Path, edit: Callable[[dict], Any] | None = None) -> tuple[Path, Path]:
    """Images 1, 2 (8x6) in tmp/img, one category, one box each, edited by ``edit``."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 6} for i in (1, 2)]
    for img in images:
        _image(tmp / "img" / img["file_name"], (8, 6))
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9} for i in (1, 2)
    ]
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
    if edit is not None:
        edit(data)
    (tmp / "ann.json").write_text(json.dumps(data))
    return tmp / "img", tmp / "ann.json"


def _coco_case(edit: Callable[[dict], Any], named: str) -> Case:
    def setup(tmp: Path):
        root, ann = _coco(tmp, edit)
        return lambda: CocoDetection(root, ann), named

    return setup


@case("coco: the annotation file does not exist")
def _(tmp: Path):
    root, _ = _coco(tmp)
    return lambda: CocoDetection(root, tmp / "instances_val2017.json"), "instances_val2017.json"


@case("coco: the annotation file is not JSON")
def _(tmp: Path):
    root, ann = _coco(tmp)
    ann.write_text("images: [] # YAML, not JSON")
    return lambda: CocoDetection(root, ann), f"{ann}': not valid JSON"


@case("coco: the file holds a list, not an object")
def _(tmp: Path):
    root, ann = _coco(tmp)
    ann.write_text("[]")
    return lambda: CocoDetection(root, ann), "'images', 'annotations', 'categories'"


CASES["coco: no 'images' key"] = (DataError, _coco_case(lambda d: d.pop("images"), "['images']"))
CASES["coco: an empty annotation list"] = (
    DataError,
    _coco_case(lambda d: d.update(annotations=[]), "'annotations' is empty"),
)
CASES["coco: an empty image list"] = (
    DataError,
    _coco_case(lambda d: d.update(images=[], annotations=[]), "'images' is empty"),
)
CASES["coco: no categories"] = (
    DataError,
    _coco_case(lambda d: d.update(categories=[], annotations=[]), "categories: the list is empty"),
)
CASES["coco: an image without width"] = (
    DataError,
    _coco_case(lambda d: d["images"][1].pop("width"), "images[1] (id 2): 'width'"),
)
CASES["coco: an annotation of an unknown image"] = (
    DataError,
    _coco_case(
        lambda d: d["annotations"][0].update(image_id=7), "annotations[0] (id 1): image_id 7"
    ),
)
CASES["coco: an annotation of an unknown category"] = (
    DataError,
    _coco_case(lambda d: d["annotations"][1].update(category_id=3), "(id 2): category_id 3"),
)
CASES["coco: a box that is not 4 finite numbers"] = (
    DataError,
    _coco_case(lambda d: d["annotations"][1].update(bbox=[1, 2, float("nan"), 3]), "'bbox'"),
)


@case("coco: the image folder does not exist")
def _(tmp: Path):
    _, ann = _coco(tmp)
    return lambda: CocoDetection(tmp / "val2017", ann), str(tmp / "val2017")


@case("coco: a listed image is missing")
def _(tmp: Path):
    root, ann = _coco(tmp)
    (root / "2.png").unlink()
    return lambda: CocoDetection(root, ann), "image id 2 '2.png'"


@case("coco: an image of another size than the JSON says (load)")
def _(tmp: Path):
    root, ann = _coco(tmp)
    _image(root / "2.png", (6, 8))
    ds = CocoDetection(root, ann)
    return lambda: ds[1], f"{root / '2.png'}' is 6x8 but"


@case("coco: filtering leaves no training image")
def _(tmp: Path):
    root, ann = _coco(tmp)
    return lambda: CocoDetection(root, ann, filter_empty_gt=True, min_size=32), str(ann)


# --- segmentation ---------------------------------------------------------------------------
def _seg(tmp: Path, n: int = 2) -> tuple[Path, Path]:
    for i in range(n):
        _image(tmp / "images" / f"{i}.png")
        _image(tmp / "masks" / f"{i}.png", mode="L", value=1)
    return tmp / "images", tmp / "masks"


@case("segmentation: an image without its mask")
def _(tmp: Path):
    images, masks = _seg(tmp)
    (masks / "1.png").unlink()
    return lambda: SegmentationFolder(images, masks), str(masks / "1.png")


@case("segmentation: image and mask of different sizes")
def _(tmp: Path):
    images, masks = _seg(tmp)
    _image(masks / "1.png", (3, 2), "L")
    return lambda: SegmentationFolder(images, masks), f"{masks / '1.png'}' is 3x2"


@case("segmentation: a colour (RGB) mask")
def _(tmp: Path):
    images, masks = _seg(tmp)
    _image(masks / "1.png", mode="RGB")
    return lambda: SegmentationFolder(images, masks), f"{masks / '1.png'}' has mode RGB"


@case("segmentation: a zero-byte mask")
def _(tmp: Path):
    images, masks = _seg(tmp)
    (masks / "1.png").write_bytes(b"")
    return lambda: SegmentationFolder(images, masks), f"{masks / '1.png'}' is empty"


@case("segmentation: mask ids outside the classes (load)")
def _(tmp: Path):
    images, masks = _seg(tmp)
    Image.fromarray(np.array([[0, 1, 7] * 2] * 4, dtype=np.uint8)).save(masks / "1.png")
    ds = SegmentationFolder(images, masks, classes=("a", "b", "c"))
    return lambda: ds[1], f"{masks / '1.png'}' holds class ids 7, outside 0..2"


@case("segmentation: 16-bit mask ids beyond the classes (load)")
def _(tmp: Path):
    images, masks = _seg(tmp)
    Image.fromarray(np.full((4, 6), 1000, dtype=np.uint16)).save(masks / "1.png")
    ds = SegmentationFolder(images, masks)
    return lambda: ds[1], f"{masks / '1.png'}' holds class ids 1000"


@case("segfolder without classes", ConfigError)
def _(tmp: Path):
    _seg(tmp)
    return lambda: build_segmentation_datasets(tmp, layout="folder"), "data.options.classes"


@case("segmentation: an unknown layout", ConfigError)
def _(tmp: Path):
    return lambda: build_segmentation_datasets(tmp, layout="ade20k"), "'ade20k'"


@case("cityscapes: data.root is not a Cityscapes folder")
def _(tmp: Path):
    _seg(tmp)
    return lambda: Cityscapes(tmp, "train"), str(tmp / "leftImg8bit" / "train")


@case("cityscapes: only the 34-class labelIds masks")
def _(tmp: Path):
    _image(tmp / "leftImg8bit/train/ulm/ulm_000000_000019_leftImg8bit.png")
    _image(tmp / "gtFine/train/ulm/ulm_000000_000019_gtFine_labelIds.png", mode="L", value=7)
    return lambda: Cityscapes(tmp, "train"), f"kdforge cityscapes-trainids {tmp}"


def test_the_catalogue_is_large() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_is_a_clear_error(name: str, tmp_path: Path) -> None:
    error, setup = CASES[name]
    trigger, named = setup(tmp_path)
    with pytest.raises(error) as info:
        trigger()
    assert named in str(info.value), str(info.value)
    if name.endswith("(load)"):
        assert isinstance(info.value, SampleError) and info.value.file is not None
