"""Colour constancy inside the model, the camera augmentation, and the recipe a model carries."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from worker.classify.export import ensure_export
from worker.training import network
from worker.training.config import TrainConfig, recipe, same_recipe


def _lesion_like(size: int = 48, seed: int = 0) -> np.ndarray:
    """Skin-toned background with a darker blob, values well inside 0..255."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 5) ** 2))
    base = np.array([150.0, 110.0, 95.0])
    img = base * (1 - 0.6 * blob[..., None]) + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 5, 200).astype(np.float32)


def test_shades_of_gray_cancels_a_per_channel_camera_cast():
    img = _lesion_like()
    cast = img * np.array([1.2, 0.95, 0.8], dtype=np.float32)  # a warmer camera, nothing clipped
    a = np.asarray(network.shades_of_gray(img[None]))[0]
    b = np.asarray(network.shades_of_gray(cast[None]))[0]
    # the cast is gone: what is left is one brightness factor (the mean of the channel gains)
    assert np.abs(a / a.mean() - b / b.mean()).max() < 1e-3
    assert np.abs(img / img.mean() - cast / cast.mean()).max() > 0.1  # ... and it was large
    # the channels now share one grey level; overall brightness is kept
    norms = [np.mean((a[..., c] / 255.0) ** 6) ** (1 / 6) for c in range(3)]
    assert max(norms) - min(norms) < 1e-3
    assert abs(a.mean() - img.mean()) < 0.1 * img.mean()


def test_a_colour_constant_model_loads_plainly_and_litert_serves_it_the_same(tmp_path):
    import keras

    from tests.modelgen import write_tiny_version
    from worker.classify.export import export_version
    from worker.classify.runtime_litert import LiteRTModel

    def served(shades_of_gray: bool):
        vdir = write_tiny_version(tmp_path / f"v-{shades_of_gray}", shades_of_gray=shades_of_gray)
        export_version(vdir)
        sha = json.loads((vdir / "model.json").read_text())["sha256"]
        return vdir, LiteRTModel.from_version_dir(vdir, sha)

    vdir, lite = served(True)
    model = keras.saving.load_model(vdir / "model.keras", compile=False)  # no custom objects
    img = _lesion_like(32)[None]
    assert np.allclose(model.predict(img, verbose=0), lite.logits(img), atol=1e-3)
    warm = img * np.array([1.15, 1.0, 0.85], dtype=np.float32)
    _, plain = served(False)  # the same weights without colour constancy
    moved = np.abs(lite.logits(img) - lite.logits(warm)).max()
    assert moved < 0.1 * np.abs(plain.logits(img) - plain.logits(warm)).max()


def test_camera_augmentation_varies_colour_and_borders_within_range():
    from worker.training.augment import augmentation_layer

    imgs = np.repeat(_lesion_like(48).astype(np.uint8)[None], 16, axis=0)
    std = np.asarray(augmentation_layer(48, "standard", 1)(imgs, training=True))
    cam = np.asarray(augmentation_layer(48, "camera", 1)(imgs, training=True))
    for batch in (std, cam):
        assert batch.shape == (16, 48, 48, 3) and batch.min() >= 0 and batch.max() <= 255
        assert len({b.tobytes() for b in batch}) == 16  # every image drew its own parameters
    # white balance: the red/blue ratio spreads more with camera variation
    def ratio_spread(b):
        return np.std(b[..., 0].mean(axis=(1, 2)) / b[..., 2].mean(axis=(1, 2)))
    assert ratio_spread(cam) > 1.5 * ratio_spread(std)
    # outside training the layer only converts to float
    same = np.asarray(augmentation_layer(48, "camera", 1)(imgs, training=False))
    assert same.dtype == np.float32 and np.array_equal(same, imgs.astype(np.float32))
    with pytest.raises(ValueError, match="augmentation"):
        augmentation_layer(48, "heavy", 1)


def test_augmentation_geometry_is_an_exact_mirror_or_quarter_turn_at_its_extremes():
    """With the small rotation, zoom and shift at zero, the warp is a dihedral symmetry: every
    output is a permutation of the input's pixels (bilinear sampling hits pixel centres)."""
    from worker.training.augment import warp

    img = np.arange(24 * 24 * 3, dtype=np.float32).reshape(1, 24, 24, 3) % 251
    zero = np.zeros(1, np.float32)
    for linear, want in [((1, 0, 0, 1), img[0]), ((-1, 0, 0, 1), img[0, :, ::-1]),
                         ((0, -1, 1, 0), np.rot90(img[0], k=1))]:
        out = np.asarray(warp(img, tuple(np.float32([v]) for v in linear), zero, zero, 24))[0]
        assert np.allclose(out, want, atol=1e-3)
    shifted = np.asarray(warp(img, tuple(np.float32([v]) for v in (1, 0, 0, 1)), zero + 2, zero, 24))[0]
    assert np.allclose(shifted[:, :-2], img[0, :, 2:], atol=1e-3)  # x_in = x_out + 2


def test_recipe_leaves_out_paths_and_older_records_compare_with_defaults(tmp_path):
    cfg = TrainConfig(data=(tmp_path,), out=tmp_path / "v", colour_constancy="shades_of_gray")
    rec = recipe(cfg)
    assert rec["colour_constancy"] == "shades_of_gray" and "out" not in rec and "data" not in rec
    json.dumps(rec)  # JSON-ready
    older = {k: v for k, v in recipe(TrainConfig(data=(), out=tmp_path)).items()
             if k not in ("colour_constancy", "augmentation")}  # made before these fields existed
    assert same_recipe(older, recipe(TrainConfig(data=(), out=tmp_path / "x")))
    assert not same_recipe(older, rec)
    with pytest.raises(ValueError, match="colour_constancy"):
        network.build_network(32, None, colour_constancy="retinex")


def test_retraining_repeats_the_champions_recipe_under_the_settings_overrides(tmp_path, tiny_model_dir):
    from types import SimpleNamespace

    from schemas import ModelMetadata
    from tests.conftest import make_settings
    from worker.retrain.cycle import _train_request
    from worker.store.versions import ModelStore

    meta = ModelMetadata.model_validate_json((tiny_model_dir / "model.json").read_text())
    champion_dir = tmp_path / "champ"
    shutil.copytree(tiny_model_dir, champion_dir)
    champ_recipe = recipe(TrainConfig(data=(), out=tmp_path, colour_constancy="shades_of_gray",
                                      augmentation="camera", epochs=8, limit=50))
    (champion_dir / "model.json").write_text(meta.model_copy(update={"recipe": champ_recipe}).model_dump_json())
    store = ModelStore(tmp_path / "store", export=ensure_export)
    champion = store.add_version(champion_dir)
    run = SimpleNamespace(settings=make_settings(tmp_path / "home", retrain_train_args={"epochs": 1}),
                          champion=champion, store=store, run_id=7, trigger="test",
                          challenger_dir=tmp_path / "challenger", cache_dir=tmp_path / "cache")
    req = _train_request(run, rows=None)
    assert req.options["colour_constancy"] == "shades_of_gray" and req.options["augmentation"] == "camera"
    assert req.options["epochs"] == 1  # the hospital's override wins
    assert "limit" not in req.options  # a smoke-run subset is never inherited
    assert "shades_of_gray" in req.command


def _tiny_model(size: int):
    import keras

    inputs = keras.Input((size, size, 3), name="rgb")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(9)(x))


def test_training_inputs_augment_only_the_training_batches_under_tensorflow():
    from worker.training.augment import training_inputs

    imgs = np.repeat(_lesion_like(24).astype(np.uint8)[None], 10, axis=0)
    masks, weights = np.ones((10, 9), np.float32), np.ones(10, np.float32)
    model = _tiny_model(24)
    trainer, data = training_inputs(model, (imgs, masks, weights), (imgs[:4], masks[:4]), 5, "camera", 7)
    assert trainer is model  # TensorFlow: augmentation in the input pipeline, the model trains as is
    x, m, w = next(iter(data["x"]))
    assert x.shape == (5, 24, 24, 3) and x.dtype == "float32" and w.shape == (5,)
    assert not np.allclose(x.numpy(), imgs[:5])  # augmented
    vx, _ = next(iter(data["validation_data"]))
    assert np.array_equal(vx.numpy(), imgs[:4].astype(np.float32))  # validation untouched
    trainer.compile(optimizer="adam", loss="mse")
    trainer.fit(**data, epochs=1, verbose=0)


def test_the_device_side_wrapper_shares_the_model_and_passes_through_outside_training():
    from worker.training.augment import augmentation_layer, training_model

    imgs = np.repeat(_lesion_like(24).astype(np.uint8)[None], 3, axis=0)
    model = _tiny_model(24)
    wrapper = training_model(model, augmentation_layer(24, "standard", 2))
    assert wrapper.input.dtype == "uint8" and len(wrapper.trainable_weights) == len(model.trainable_weights)
    assert np.allclose(wrapper.predict(imgs, verbose=0), model.predict(imgs.astype(np.float32), verbose=0),
                       atol=1e-5)
    trained = np.asarray(wrapper(imgs, training=True))
    assert not np.allclose(trained, model.predict(imgs.astype(np.float32), verbose=0), atol=1e-5)


def test_per_image_blur_equals_a_separable_zero_padded_gaussian():
    from worker.training.augment import gaussian_blur

    rng = np.random.default_rng(4)
    x = rng.random((3, 12, 10, 3)).astype(np.float32)
    sigmas = np.array([0.6, 1.0, 1.6], np.float32)
    got = np.asarray(gaussian_blur(x, sigmas.reshape(3, 1, 1, 1)))
    for i, sigma in enumerate(sigmas):
        k = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)
        k /= k.sum()
        want = x[i]
        for axis in (0, 1):
            padded = np.pad(want, [(3, 3) if a == axis else (0, 0) for a in range(3)])
            want = sum(k[j] * np.take(padded, range(j, j + want.shape[axis]), axis=axis) for j in range(7))
        assert np.allclose(got[i], want, atol=1e-5)


def test_saturation_and_hue_map_keeps_grey_grey_and_identity_at_rest():
    from worker.training.augment import _yiq_bases

    a, b, c = _yiq_bases()
    assert np.allclose(a + b, np.eye(3), atol=1e-5)  # saturation 1, no turn: identity
    grey = np.full((1, 3), 0.4, np.float32)
    for s, t in [(0.8, 0.2), (1.2, -0.2)]:
        m = a + s * np.cos(t) * b + s * np.sin(t) * c
        assert np.allclose(grey @ m, grey, atol=1e-5)  # no chroma: nothing to scale or turn
