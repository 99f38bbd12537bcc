"""TrivialAugment Wide: each op's effect, torchvision's draw order, and the tensor path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kdforge.data.autoaugment import TRIVIAL_AUGMENT_OPS, TrivialAugmentWide, apply_op


def _rgb(seed: int = 0, size: tuple[int, int] = (12, 10)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


def test_identity_and_zero_magnitudes_keep_the_image() -> None:
    img = _rgb()
    for op in ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        assert (_arr(apply_op(img, op, 0.0)) == _arr(img)).all(), op
    for op in ("Brightness", "Color", "Contrast", "Sharpness"):  # factor 1 + 0
        assert (_arr(apply_op(img, op, 0.0)) == _arr(img)).all(), op


def test_shear_x_reads_x_plus_m_y_about_the_top_left_corner() -> None:
    img, m = _rgb(1), 0.5
    out, src = _arr(apply_op(img, "ShearX", m)), _arr(img)
    for y in range(img.height):
        for x in range(img.width):
            xin = int(np.floor(x + 0.5 + m * (y + 0.5)))  # Pillow samples pixel centres
            expected = src[y, xin] if xin < img.width else [0, 0, 0]
            assert (out[y, x] == expected).all(), (x, y)
    sheared_y = _arr(apply_op(img.transpose(Image.Transpose.TRANSPOSE), "ShearY", m))
    assert (sheared_y.transpose(1, 0, 2) == out).all()  # ShearY is ShearX on the transpose


@pytest.mark.parametrize(("op", "shift"), [("TranslateX", 3.7), ("TranslateY", -2.2)])
def test_translate_moves_by_whole_pixels_and_fills_with_zero(op: str, shift: float) -> None:
    img = _rgb(2)
    out, src, t = _arr(apply_op(img, op, shift)), _arr(img), int(shift)
    axis = 1 if op == "TranslateX" else 0
    expected = np.roll(src, t, axis=axis)
    edge = [slice(None)] * 3
    edge[axis] = slice(0, t) if t > 0 else slice(t, None)
    expected[tuple(edge)] = 0
    assert (out == expected).all()


def test_rotate_is_counter_clockwise_about_the_centre() -> None:
    img = _rgb(3, (8, 8))
    assert (_arr(apply_op(img, "Rotate", 90.0)) == np.rot90(_arr(img))).all()
    quarter = _arr(apply_op(img, "Rotate", 45.0, interpolation="bilinear"))
    assert (quarter[0, 0] == 0).all()  # corners leave the frame and are filled


def test_colour_ops() -> None:
    flat = Image.new("RGB", (6, 6), (100, 150, 200))
    assert (_arr(apply_op(flat, "Brightness", -0.5)) == [50, 75, 100]).all()
    grey = Image.new("RGB", (6, 6), (90, 90, 90))
    assert (_arr(apply_op(grey, "Contrast", 0.9)) == 90).all()  # nothing to stretch
    assert (_arr(apply_op(grey, "Color", 0.99)) == 90).all()  # no saturation to change
    washed = _arr(apply_op(_rgb(4), "Color", -1.0))
    assert (np.ptp(washed, axis=2) <= 1).all()  # factor 0: grey
    mean = int(np.asarray(_rgb(4).convert("L")).mean() + 0.5)
    assert (_arr(apply_op(_rgb(4), "Contrast", -1.0)) == mean).all()  # factor 0: the mean
    spike = np.zeros((7, 7, 3), np.uint8)
    spike[3, 3] = 255
    blurred = _arr(apply_op(Image.fromarray(spike), "Sharpness", -0.99))
    assert 0 < blurred[3, 3, 0] < 255 and blurred[2, 3, 0] > 0


def test_posterize_solarize_autocontrast_equalize() -> None:
    img = _rgb(5)
    assert (_arr(apply_op(img, "Posterize", 4.0)) == (_arr(img) & 0xF0)).all()
    src = _arr(img)
    assert (_arr(apply_op(img, "Solarize", 128.0)) == np.where(src >= 128, 255 - src, src)).all()
    low = Image.fromarray(np.linspace(50, 100, 60).astype(np.uint8).reshape(6, 10))
    stretched = _arr(apply_op(low, "AutoContrast", 0.0))
    assert stretched.min() == 0 and stretched.max() >= 250  # from 50..100
    ramp = Image.fromarray(np.repeat(np.arange(64, dtype=np.uint8), 16).reshape(32, 32))
    equalised = _arr(apply_op(ramp, "Equalize", 0.0))
    assert equalised.min() == 0 and equalised.max() > 240
    assert (equalised == _arr(ImageOps.equalize(ramp))).all()
    with pytest.raises(ValueError, match="valid"):
        apply_op(img, "Invert", 0.0)


def _torchvision_draw(seed: int) -> tuple[str, float]:
    """torchvision's TrivialAugmentWide.forward draw sequence, written out."""
    torch.manual_seed(seed)
    op = TRIVIAL_AUGMENT_OPS[int(torch.randint(14, (1,)).item())]
    if op in ("Identity", "AutoContrast", "Equalize"):
        return op, 0.0
    bins = {
        "Posterize": 8 - (torch.arange(31) / 5).round().int(),
        "Solarize": torch.linspace(255.0, 0.0, 31),
        "Rotate": torch.linspace(0.0, 135.0, 31),
        "TranslateX": torch.linspace(0.0, 32.0, 31),
        "TranslateY": torch.linspace(0.0, 32.0, 31),
    }.get(op, torch.linspace(0.0, 0.99, 31))
    magnitude = float(bins[torch.randint(31, (1,), dtype=torch.long)].item())
    signed = op not in ("Posterize", "Solarize")
    return op, -magnitude if signed and torch.randint(2, (1,)) else magnitude


def test_sampling_draws_as_torchvision_and_covers_every_op() -> None:
    ta = TrivialAugmentWide()
    drawn = []
    for seed in range(300):
        torch.manual_seed(seed)
        drawn.append(ta.sample_params())
        assert drawn[-1] == _torchvision_draw(seed)
    assert {op for op, _ in drawn} == set(TRIVIAL_AUGMENT_OPS)
    assert any(m < 0 for op, m in drawn if op == "Rotate")
    assert all(2 <= m <= 8 for op, m in drawn if op == "Posterize")


def test_call_replays_and_tensor_path_matches_pillow() -> None:
    ta, img = TrivialAugmentWide(interpolation="bilinear"), _rgb(6)
    tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    for seed in range(20):
        torch.manual_seed(seed)
        params = ta.sample_params()
        torch.manual_seed(seed)
        assert (_arr(ta(img)) == _arr(ta.apply(img, params))).all()
        out = ta.apply(tensor, params)
        assert out.dtype == torch.uint8 and out.shape == tensor.shape
        assert (out.permute(1, 2, 0).numpy() == _arr(ta.apply(img, params))).all()
    grey = Image.new("L", (8, 8), 77)
    assert apply_op(grey, "Rotate", 30.0).mode == "L"
    with pytest.raises(TypeError, match="uint8"):
        ta.apply(tensor.float(), params)
    with pytest.raises(ValueError, match="interpolation"):
        TrivialAugmentWide(interpolation="bicubic")
