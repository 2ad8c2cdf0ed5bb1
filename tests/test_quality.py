"""Quality gate: usable photos pass, blank / dark / blown-out pictures fail with a reason."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.imagegen import DICOM_MATRIX, dicom_bytes, jpeg_bytes, lesion_rgb
from worker.imaging import assess_quality, decode_bytes
from worker.imaging import quality as q


def _vignette(rgb: np.ndarray, keep: float) -> np.ndarray:
    """Black outside a centred circle of radius ``keep`` x half the short side (dermatoscope)."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    outside = np.hypot(yy - h / 2, xx - w / 2) > keep * min(h, w) / 2
    out = rgb.copy()
    out[outside] = 0
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("size", [(240, 320), (64, 64), (450, 600)])
def test_synthetic_lesions_are_usable(seed: int, size: tuple[int, int]) -> None:
    assert assess_quality(lesion_rgb(size, seed=seed)) == (True, None)


def test_decoded_fixtures_are_usable() -> None:
    rgb = lesion_rgb()
    assert assess_quality(decode_bytes(jpeg_bytes(rgb, quality=60)).rgb)[0]
    for ts, pi in DICOM_MATRIX[:1] + DICOM_MATRIX[4:5]:
        assert assess_quality(decode_bytes(dicom_bytes(rgb, ts, pi)).rgb)[0]


def test_dermatoscope_vignette_is_usable() -> None:
    rgb = lesion_rgb((300, 400))
    assert assess_quality(_vignette(rgb, 1.0))[0]  # circle touching the short sides
    assert assess_quality(_vignette(rgb, 0.6))[0]  # small field of view, mostly black


def test_darker_skin_and_dim_photo_are_usable() -> None:
    rgb = lesion_rgb()
    assert assess_quality((rgb * 0.45).astype(np.uint8))[0]
    assert assess_quality((rgb * 0.3).astype(np.uint8))[0]


@pytest.mark.parametrize(
    ("value", "word"), [(0, "dark"), (90, "uniform"), (128, "uniform"), (255, "overexposed")]
)
def test_uniform_image_is_rejected(value: int, word: str) -> None:
    usable, reason = assess_quality(np.full((100, 100, 3), value, np.uint8))
    assert not usable and word in reason


def test_nearly_uniform_noise_is_rejected() -> None:
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(120, 1.5, (200, 200, 3)), 0, 255).astype(np.uint8)
    usable, reason = assess_quality(img)
    assert not usable and "uniform" in reason


def test_far_too_dark_is_rejected() -> None:
    usable, reason = assess_quality((lesion_rgb() * 0.1).astype(np.uint8))
    assert not usable and "dark" in reason


def test_blown_out_is_rejected() -> None:
    rgb = lesion_rgb()
    bright = np.clip(rgb.astype(int) + 120, 0, 255).astype(np.uint8)
    usable, reason = assess_quality(bright)
    assert not usable and "overexposed" in reason

    half_white = rgb.copy()
    half_white[: int(rgb.shape[0] * 0.6)] = 255
    usable, reason = assess_quality(half_white)
    assert not usable and "blown out" in reason


def test_clipped_means_all_three_channels_at_white() -> None:
    """Saturated in one or two channels (a yellow sticker, red blood) is not blown out."""
    rgb = lesion_rgb()
    h = int(rgb.shape[0] * 0.6)
    for colour in ((255, 255, 0), (255, 0, 0), (0, 255, 255)):
        saturated = rgb.copy()
        saturated[:h] = colour
        usable, reason = assess_quality(saturated)
        assert "blown out" not in (reason or "")
    white = rgb.copy()
    white[:h] = (250, 251, 255)
    usable, reason = assess_quality(white)
    assert not usable and "60% of pixels are blown out" in reason


def test_exposure_is_read_from_a_strided_sample_of_the_whole_photo() -> None:
    """A large photo is sampled, not cropped: a blown-out band at its bottom still counts."""
    rgb = np.tile(lesion_rgb(), (10, 10, 1))  # 2400 x 3200, far more than MAX_SAMPLED_PIXELS
    assert rgb.shape[0] * rgb.shape[1] > 100 * q.MAX_SAMPLED_PIXELS
    rgb[int(rgb.shape[0] * 0.55):] = 255
    usable, reason = assess_quality(rgb)
    assert not usable and "45% of pixels are blown out" in reason


def test_hazy_bright_without_clipping_is_rejected() -> None:
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(246, 3, (120, 160, 3)), 0, 249).astype(np.uint8)
    usable, reason = assess_quality(img)
    assert not usable and "overexposed" in reason


def test_large_image_is_cheap() -> None:
    big = np.tile(lesion_rgb(), (15, 15, 1))  # 3600 x 4800 = 17 MP
    start = time.perf_counter()
    assert assess_quality(big)[0]
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 10, 3), np.uint8),
    ],
)
def test_not_an_rgb_array_is_a_programming_error(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        assess_quality(bad)


def test_thresholds_are_ordered() -> None:
    assert 0 < q.MIN_LUMA_STD < q.MIN_MEAN_LUMA < q.LIT_LUMA < q.MAX_MEAN_LUMA < 255
    assert 0 < q.MIN_LIT_FRACTION < q.MAX_CLIPPED_FRACTION < 1
