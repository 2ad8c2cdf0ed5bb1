"""Not dermoscopy -> unusable -> indeterminate (issue 12, item 3), on generated pictures.

The numbers on real dermoscopy images and packaged sample photos come from
``benchmarks/eval_dermoscopy_check.py``; these tests pin the behaviour on fixtures made here.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from schemas import CLASS_NAMES, TriageLevel, TriageThresholds
from tests import nondermgen as nd
from tests.imagegen import jpeg_bytes, lesion_rgb
from worker.classify.triage import decide, explain
from worker.imaging import assess_quality, decode_bytes
from worker.imaging import dermoscopy_check as dc
from worker.imaging.colour_statistics import colour_statistics, working_copy


def _with_hair(rgb: np.ndarray, n: int = 40, seed: int = 0) -> np.ndarray:
    """Dark hairs, two pixels wide, across the picture (dense hair is common in dermoscopy)."""
    out = rgb.copy()
    h, w = rgb.shape[:2]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x0, x1 = rng.uniform(0, w, 2)
        ys = np.arange(h)
        xs = np.clip((x0 + (x1 - x0) * ys / h).astype(int), 0, w - 2)
        out[ys, xs] = out[ys, xs + 1] = (40, 30, 25)
    return out


def _vignette(rgb: np.ndarray, keep: float = 0.9) -> np.ndarray:
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    out = rgb.copy()
    out[np.hypot(yy - h / 2, xx - w / 2) > keep * min(h, w) / 2] = 0
    return out


def _cast(rgb: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(rgb * np.array(gains), 0, 255).astype(np.uint8)


DERMOSCOPY_LIKE = {
    "lesion": lambda: lesion_rgb((224, 224)),
    "lesion_4_3": lambda: lesion_rgb((450, 600), seed=3),
    "lesion_small": lambda: lesion_rgb((64, 64), seed=1),
    "vignette": lambda: _vignette(lesion_rgb((300, 400), seed=2)),
    "small_field_of_view": lambda: _vignette(lesion_rgb((300, 400), seed=4), 0.6),
    "dense_hair": lambda: _with_hair(lesion_rgb((224, 224), seed=5)),
    "blue_white_balance": lambda: _cast(lesion_rgb((224, 224), seed=6), (0.7, 0.95, 1.45)),
    "dim": lambda: (lesion_rgb(seed=7) * 0.45).astype(np.uint8),
    "decoded_jpeg": lambda: decode_bytes(jpeg_bytes(lesion_rgb(seed=8), quality=60)).rgb,
}


@pytest.mark.parametrize("name", list(DERMOSCOPY_LIKE))
def test_dermoscopy_like_pictures_pass(name: str) -> None:
    rgb = DERMOSCOPY_LIKE[name]()
    assert dc.check_dermoscopy(rgb) == (True, "consistent with dermoscopy")
    assert assess_quality(rgb) == (True, None)


@pytest.mark.parametrize("seed", range(6))
def test_pen_mark_on_skin_is_still_dermoscopy(seed: int) -> None:
    rgb = lesion_rgb((224, 224), seed=seed)
    rgb[20:22, :] = (60, 70, 200)  # a blue surgical-marker line
    rgb[:, 200:202] = (60, 70, 200)
    assert dc.check_dermoscopy(rgb)[0]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("radiograph_0", "greyscale"),
        ("radiograph_lightbox_tint", "greyscale"),
        ("chest_radiograph_0", "greyscale"),
        ("document_0", "greyscale"),
        ("document_cream_paper", "greyscale"),
        ("document_letterhead", "greyscale"),
        ("screenshot_0", "flat synthetic colour"),
        ("colour_bars", "flat synthetic colour"),
        ("clinical_photo_green_drape", "green or cyan"),
    ],
)
def test_not_dermoscopy_is_named(name: str, words: str) -> None:
    ok, why = dc.check_dermoscopy(nd.GENERATED[name]())
    assert not ok and words in why


def test_greyscale_lesion_is_not_dermoscopy() -> None:
    grey = lesion_rgb((224, 224)).mean(axis=2).astype(np.uint8)
    ok, why = dc.check_dermoscopy(np.stack([grey] * 3, axis=-1))
    assert not ok and "greyscale" in why


def test_colour_document_photo_is_a_document() -> None:
    """A phone photo of a letter: warm light and shading (not a tinted greyscale), text edges."""
    page = nd.document_rgb((300, 230), seed=7).astype(np.float32)
    h, w = page.shape[:2]
    shade = np.linspace(0.92, 1.0, w)[None, :, None] * np.array([1.0, 0.97, 0.9])
    noise = np.random.default_rng(0).normal(0, 6, page.shape)
    photo = np.clip(page * shade + noise, 0, 255).astype(np.uint8)
    ok, why = dc.check_dermoscopy(photo)
    assert not ok and any(word in why for word in ("document", "greyscale", "sharp edges"))


def test_text_heavy_colour_page_fires_the_document_rule() -> None:
    f = dc.dermoscopy_features(nd.document_rgb(seed=1))
    f["chromaticity_spread"], f["chroma_p90"] = 0.05, 50.0  # as if it were colour: the next rule still fires
    ok, why = dc.judge(f)
    assert not ok and "document" in why


def test_scene_rule_ignores_hair_but_not_objects() -> None:
    rng = np.random.default_rng(0)
    scene = np.zeros((224, 224, 3), np.uint8)
    for _ in range(60):  # a cluttered room: many solid objects with hard edges
        y, x = rng.integers(0, 200, 2)
        scene[y:y + rng.integers(8, 40), x:x + rng.integers(8, 40)] = rng.integers(60, 255, 3)
    scene = np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8)
    hairy = dc.dermoscopy_features(_with_hair(lesion_rgb((224, 224))))
    objects = dc.dermoscopy_features(scene)
    assert hairy["scene_edge_fraction"] < dc.SCENE_EDGE_FRACTION < objects["scene_edge_fraction"]


#: Generated pictures the check is known to miss: skin filling the middle of the frame in front
#: of a grey wall or a blue drape has no statistic that pale, lavender or blue-grey
#: dermoscopy images lack (a rule for the blue drape flagged 6 of 1,000 real images).
KNOWN_MISSES = frozenset({"clinical_photo_grey_wall", "clinical_photo_blue_drape"})


@pytest.mark.parametrize("name", sorted(set(nd.GENERATED) - KNOWN_MISSES))
def test_every_generated_non_dermoscopy_picture_is_unusable(name: str) -> None:
    usable, reason = assess_quality(nd.GENERATED[name]())
    assert not usable and reason


def test_known_misses_are_still_missed() -> None:
    """When the check improves, move the picture out of KNOWN_MISSES."""
    for name in KNOWN_MISSES:
        assert assess_quality(nd.GENERATED[name]()) == (True, None)


def test_blank_frames_keep_their_exposure_reason() -> None:
    assert "dark" in assess_quality(nd.blank_rgb((0, 0, 0)))[1]
    assert "overexposed" in assess_quality(nd.blank_rgb((255, 255, 255)))[1]
    assert "uniform" in assess_quality(nd.blank_rgb((222, 170, 140), noise=2.0))[1]


def test_radiograph_comes_out_indeterminate_with_the_reason() -> None:
    usable, reason = assess_quality(nd.radiograph_rgb())
    assert not usable and reason.startswith("not a dermoscopy image (greyscale")
    thresholds = TriageThresholds(urgent_melanoma=0.1, soon_keratinocyte=0.5, min_confidence=0.2)
    probs = dict.fromkeys(CLASS_NAMES, 0.0) | {"melanoma": 0.9, "nevus": 0.1}  # would be urgent
    level = decide(probs, thresholds, usable_image=usable)
    assert level is TriageLevel.INDETERMINATE
    assert "not a dermoscopy image" in explain(probs, thresholds, level, reason)


def test_too_dark_to_judge_is_left_to_the_exposure_check() -> None:
    assert dc.check_dermoscopy(np.zeros((50, 50, 3), np.uint8)) == (True, "too little lit area to judge")


def test_cheap_at_224_pixels_and_on_a_large_photo() -> None:
    rgb = lesion_rgb((224, 224))
    dc.check_dermoscopy(rgb)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        dc.check_dermoscopy(rgb)
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.010  # ~1 ms on an idle core; generous for shared CI
    big = np.tile(lesion_rgb(), (10, 10, 1))  # 2400 x 3200
    t0 = time.perf_counter()
    assert dc.check_dermoscopy(big)[0]
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("shape", [(224, 224), (180, 180), (1000, 1500), (3000, 4000), (40, 40)])
def test_working_copy_has_a_fixed_scale(shape: tuple[int, int]) -> None:
    img = working_copy(np.zeros((*shape, 3), np.uint8))
    assert img.dtype == np.float32 and min(img.shape[:2]) <= max(72, min(shape))
    assert min(img.shape[:2]) >= min(36, min(shape))


def test_colour_statistics_follow_a_colour_cast() -> None:
    rgb = lesion_rgb((224, 224))
    base = colour_statistics(rgb)
    bluish = colour_statistics(_cast(rgb, (0.8, 1.0, 1.3)))
    darker = colour_statistics((rgb * 0.7).astype(np.uint8))
    assert bluish["red_blue"] < base["red_blue"] - 30
    assert darker["brightness"] < base["brightness"] - 30
    assert set(base) == {"brightness", "contrast", "saturation", "red_blue", "lit_fraction"}


def test_not_an_rgb_array_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        dc.check_dermoscopy(np.zeros((10, 10), np.uint8))
