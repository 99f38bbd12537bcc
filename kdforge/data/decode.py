"""Decoding image and mask files; every failure is a SampleError naming the file.

:func:`decode_image` (Pillow, for classification as torchvision) gives 8-bit RGB PIL images.
:func:`decode_image_cv` decodes with OpenCV as mmcv's ``LoadImageFromFile`` does for the
detection and segmentation pipelines (``cv2.imdecode``; BGR turned to RGB), as an ``(H, W, 3)``
uint8 array. Masks are read with Pillow, as mmsegmentation's ``LoadAnnotations`` does.

With Pillow, images become 8-bit RGB. Grey, palette, alpha, CMYK and other modes are converted;
16-bit grey images (``I;16``, or ``I`` as older Pillow opens 16-bit PNGs) are scaled to
0..255 (``round(v * 255 / 65535)``) instead of being clipped at 255; images Pillow holds as
float (``F``) or 32-bit integers beyond 16 bits are refused. With OpenCV, the same files
become RGB exactly as ``cv2.IMREAD_COLOR`` converts them (alpha dropped, grey and palettes
expanded); 16-bit images are scaled as ``IMREAD_COLOR`` scales them (``v >> 8``, what mmcv
feeds the model, within 1 of Pillow's rounding); float or 32-bit pixels are refused. Neither
applies the EXIF orientation (nor do torchvision's and timm's loaders; COCO's boxes and
sizes are those of the stored pixels): pixels are used as stored, and ``kdforge
check-data`` lists the images that carry a rotation.

Masks keep their class ids: ``L`` and ``P`` (palette indices) as they are, ``1`` as 0/1 and
16-bit grey as integers (never scaled); every id must be a class (``0..K-1``) or the
ignore index. Colour masks are refused.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from kdforge.data.bad_samples import SampleError

__all__ = [
    "MASK_MODES",
    "decode_image",
    "decode_image_cv",
    "decode_mask",
    "exif_rotation",
    "mask_mode_problem",
    "mask_values_problem",
    "read_header",
]

MASK_MODES = ("L", "P", "1", "I;16", "I;16L", "I;16B", "I;16N", "I")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# what Pillow raises on damaged files (UnidentifiedImageError is an OSError)
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombError,
)
_FIX = "replace or delete the file"
_ROTATIONS = {3: "rotate 180", 6: "rotate 90 clockwise", 8: "rotate 90 counter-clockwise"}
_ROTATIONS |= {2: "mirror", 4: "flip", 5: "transpose", 7: "transverse"}


def _reason(path: Path, exc: BaseException, what: str) -> str:
    """Why ``path`` cannot be read, in words a user can act on."""
    where = f"{what} {str(path)!r}"
    if not path.exists():
        return f"{where} does not exist"
    if path.is_file() and path.stat().st_size == 0:
        return f"{where} is empty (0 bytes); {_FIX}"
    if isinstance(exc, Image.DecompressionBombError):
        return f"{where}: {exc}; raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine"
    if isinstance(exc, UnidentifiedImageError):
        with path.open("rb") as f:
            head = f.read(12)
        return (
            f"{where} is not an image Pillow can read (it starts with {head!r}: a web page, "
            f"a text file or an unsupported format saved under an image name?); {_FIX}"
        )
    return f"{where} is truncated or damaged ({type(exc).__name__}: {exc}); {_FIX}"


def _open(path: Path, what: str) -> Image.Image:
    try:
        return Image.open(path)
    except _DECODE_ERRORS as exc:
        raise SampleError(_reason(path, exc, what), path) from exc


def _load(img: Image.Image, path: Path, what: str) -> None:
    try:
        img.load()
    except _DECODE_ERRORS as exc:
        raise SampleError(_reason(path, exc, what), path) from exc


def read_header(path: str | Path, what: str = "image") -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` from the file header, without decoding the pixels."""
    path = Path(path)
    with _open(path, what) as img:
        return img.size, img.mode


def exif_rotation(path: str | Path) -> str | None:
    """The EXIF orientation of ``path`` in words (``"rotate 90 clockwise"``), None if upright."""
    path = Path(path)
    with _open(path, "image") as img:
        try:
            orientation = img.getexif().get(0x0112, 1)
        except _DECODE_ERRORS:  # a damaged EXIF block: the decode check reports the file
            return None
    return _ROTATIONS.get(orientation)


def _sixteen_bit_to_rgb(img: Image.Image, path: Path) -> Image.Image:
    values = np.asarray(img)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise SampleError(
            f"image {str(path)!r} holds 32-bit integers ({values.min()}..{values.max()}); "
            "save it as 8- or 16-bit",
            path,
        )
    # (H, W) 0..65535 -> 0..255, rounded
    grey = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in _SIXTEEN_BIT:
        return _sixteen_bit_to_rgb(img, path)
    if img.mode == "F":
        raise SampleError(
            f"image {str(path)!r} holds floating-point pixels (mode F); save it as 8 bits", path
        )
    if img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow asks palette transparency to go through RGBA
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise SampleError(
            f"image {str(path)!r} has mode {img.mode}, which Pillow cannot convert to RGB; "
            "save it as RGB",
            path,
        ) from exc


def decode_image(path: str | Path) -> Image.Image:
    """Decode ``path`` as an 8-bit RGB ``PIL.Image`` (see the module notes on modes).

    Raises:
        SampleError: the file is missing, empty, not an image, truncated or in a mode that
            cannot become RGB; the message names the file and the fix.
    """
    path = Path(path)
    with _open(path, "image") as img:
        _load(img, path, "image")
        return _to_rgb(img, path)


def _undecodable(path: Path) -> str:
    """Why OpenCV could not decode ``path``, a file that exists and is not empty."""
    if cv2.haveImageReader(str(path)):
        return f"image {str(path)!r} is truncated or damaged (OpenCV cannot decode it); {_FIX}"
    with path.open("rb") as f:
        head = f.read(12)
    return (
        f"image {str(path)!r} is not an image OpenCV can read (it starts with {head!r}: a web "
        f"page, a text file or an unsupported format saved under an image name?); {_FIX}"
    )


def _cv_to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """An ``IMREAD_UNCHANGED`` array -> ``(H, W, 3)`` uint8 RGB, as ``IMREAD_COLOR`` + BGR2RGB."""
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)  # OpenCV's own 16 -> 8 bit conversion
    elif array.dtype != np.uint8:
        kind = "floating-point" if array.dtype.kind == "f" else f"{array.dtype}"
        raise SampleError(f"image {str(path)!r} holds {kind} pixels; save it as 8- or 16-bit", path)
    channels = 1 if array.ndim == 2 else array.shape[2]
    codes = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    if channels not in codes:
        raise SampleError(
            f"image {str(path)!r} has {channels} channels; save it as grey, RGB or RGBA", path
        )
    return cv2.cvtColor(array if array.ndim == 3 else array[:, :, None], codes[channels])


def decode_image_cv(path: str | Path) -> np.ndarray:
    """Decode ``path`` with OpenCV as mmcv does, as an ``(H, W, 3)`` uint8 RGB array.

    ``cv2.imdecode(..., IMREAD_UNCHANGED)``, then the conversions of ``IMREAD_COLOR`` (equal
    to mmcv's ``'color'`` decode on 8-bit files, EXIF orientation aside: it is not applied, as
    with Pillow) and BGR -> RGB (mmdetection's ``bgr_to_rgb``; the caffe-style normaliser
    turns it back).

    Raises:
        SampleError: the file is missing, empty, not an image, truncated, or holds float or
            32-bit pixels; the message names the file and the fix.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SampleError(_reason(path, exc, "image"), path) from exc
    if data.size == 0:
        raise SampleError(f"image {str(path)!r} is empty (0 bytes); {_FIX}", path)
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # stored depth, channels, orientation
    except cv2.error:
        array = None
    if array is None:
        raise SampleError(_undecodable(path), path)
    return _cv_to_rgb(array, path)


def mask_values_problem(
    labels: np.ndarray, num_classes: int, ignore_index: int, path: str | Path
) -> str | None:
    """What is wrong with the ids in ``labels`` (``(H, W)`` integers), or None."""
    if labels.size == 0 or int(labels.max()) < num_classes:
        return None
    low = int(labels.min())
    if low < 0:
        return f"mask {str(path)!r} holds negative class ids (down to {low})"
    counts = np.bincount(labels.ravel())  # ids present -> counts
    present = np.flatnonzero(counts)
    bad = present[(present >= num_classes) & (present != ignore_index)]
    if not len(bad):
        return None
    shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
    return (
        f"mask {str(path)!r} holds class ids {shown}, outside 0..{num_classes - 1} and not the "
        f"ignore index {ignore_index}: masks written for another class list (Cityscapes "
        "label ids 0..33 instead of train ids 0..18?), or too few classes in the recipe"
    )


def decode_mask(path: str | Path, num_classes: int, ignore_index: int = 255) -> Image.Image:
    """Decode a label mask, class ids kept: mode ``L``/``P`` as stored, else ``L`` (ids up to
    255) or ``I`` (larger ids, for more than 255 classes).

    Raises:
        SampleError: an unreadable file, a colour mask, or an id that is neither a class
            (``0..num_classes-1``) nor ``ignore_index``.
    """
    path = Path(path)
    with _open(path, "mask") as img:
        if img.mode not in MASK_MODES:
            raise SampleError(mask_mode_problem(path, img.mode), path)
        _load(img, path, "mask")
        labels = np.asarray(img)
        if img.mode == "1":
            labels = labels.astype(np.uint8)  # bool -> 0/1
        problem = mask_values_problem(labels, num_classes, ignore_index, path)
        if problem:
            raise SampleError(problem, path)
        if img.mode in ("L", "P"):
            return img.copy()
    if labels.max(initial=0) <= 255:
        return Image.fromarray(labels.astype(np.uint8), "L")
    return Image.fromarray(labels.astype(np.int32), "I")


def mask_mode_problem(path: Path, mode: str) -> str:
    """The message for a mask whose mode holds no class ids."""
    return (
        f"mask {str(path)!r} has mode {mode}; a mask holds one class id per pixel (8-bit "
        "grey L, palette P or 16-bit grey). Convert colour-coded masks to ids first (for "
        "Cityscapes use *_gtFine_labelTrainIds.png: `kdforge cityscapes-trainids ROOT`)"
    )
