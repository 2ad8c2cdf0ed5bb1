"""EfficientNet-Lite0 backbone: names, the .npz weight loader, and training a version with it.

The ImageNet weights themselves are not needed: a random model's weights written in the
converter's key format stand in for them.
"""

from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from schemas import CLASS_NAMES, ModelMetadata
from tests.test_datachecks import make_fixture_data
from worker.training import lite0, network


def _save_npz(model, path, drop: str | None = None, extra: bool = False):
    arrays = {lite0.weight_key(layer, v): np.asarray(v.numpy())
              for layer in model.layers for v in layer.weights}
    if drop:
        arrays.pop(drop)
    if extra:
        arrays["block9z_dwconv/kernel"] = np.zeros(3, np.float32)
    arrays["_meta/source"] = np.array("test")
    np.savez(path, **arrays)


def test_layer_names_follow_the_block_table():
    model = lite0.build_lite0((32, 32, 3))
    names = [layer.name for layer in model.layers]
    assert len(lite0.BLOCK_PREFIXES) == sum(stage[4] for stage in lite0.STAGES) == 16
    assert "block1a_expand_conv" not in names  # expand ratio 1: no expansion
    assert lite0.first_layer_name("block5a") == "block5a_expand_conv" in names
    assert model.output_shape == (None, 1, 1, lite0.HEAD_FILTERS)  # stride 32


def _randomised(model):
    """Every variable random (BatchNorm variances positive): outputs that tell models apart."""
    rng = np.random.default_rng(1)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.0, v.shape).astype("float32") if "variance" in v.name
                 else rng.normal(0, 0.3, v.shape).astype("float32"))
    return model


def test_npz_weights_round_trip_and_mismatches_are_refused(tmp_path):
    src = _randomised(lite0.build_lite0((32, 32, 3)))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    _save_npz(src, tmp_path / "w.npz")
    dst = lite0.build_lite0((32, 32, 3))
    assert not np.allclose(src(x), dst(x))
    n = lite0.load_lite0_weights(dst, tmp_path / "w.npz")
    assert n == sum(len(layer.weights) for layer in src.layers)
    np.testing.assert_allclose(src(x), dst(x), rtol=1e-5, atol=1e-5)

    _save_npz(src, tmp_path / "missing.npz", drop="head_bn/gamma")
    with pytest.raises(ValueError, match="head_bn/gamma"):
        lite0.load_lite0_weights(dst, tmp_path / "missing.npz")
    _save_npz(src, tmp_path / "extra.npz", extra=True)
    with pytest.raises(ValueError, match="block9z_dwconv/kernel"):
        lite0.load_lite0_weights(dst, tmp_path / "extra.npz")
    with pytest.raises(FileNotFoundError):
        lite0.load_lite0_weights(dst, tmp_path / "absent.npz")


def test_network_scales_pixels_and_unfreezes_from_a_block_prefix(tmp_path):
    import keras

    base = lite0.build_lite0((32, 32, 3))
    _save_npz(base, tmp_path / "w.npz")
    model = network.build_network(32, tmp_path / "w.npz", backbone="lite0")
    assert model.output_shape == (None, len(CLASS_NAMES))
    scale = model.get_layer("scale")
    assert scale.scale == pytest.approx(1 / 128) and scale.offset == pytest.approx(-127 / 128)
    network.set_trainable(model, 2, "block6a")
    body = model.get_layer(network.BASE_NAME)
    trainable = {layer.name for layer in body.layers if layer.trainable and layer.weights}
    assert "block6a_expand_conv" in trainable and "head_conv" in trainable
    assert "block5c_project_conv" not in trainable and "stem_conv" not in trainable
    assert not any(isinstance(body.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
    with pytest.raises(ValueError, match="block9z"):
        network.set_trainable(model, 2, "block9z")
    with pytest.raises(ValueError, match="backbone"):
        network.build_network(32, None, backbone="resnet")


def test_resolve_weights_per_backbone():
    assert network.resolve_weights("imagenet", "mobilenet") == network.DEFAULT_WEIGHTS
    assert network.resolve_weights("imagenet", "lite0") == network.LITE0_WEIGHTS
    assert network.resolve_weights("none", "lite0") is None and network.resolve_weights(None, "x") is None
    assert str(network.resolve_weights("w/x.npz", "lite0")) == "w/x.npz"


@pytest.mark.slow
def test_train_a_lite0_version_that_the_workers_load(tmp_path):
    from worker.classify.inference import Classifier
    from worker.store.versions import ModelStore
    from worker.training.cli import register

    make_fixture_data(tmp_path / "data", per_class=4)
    app = typer.Typer(pretty_exceptions_show_locals=False)
    register(app)
    out = tmp_path / "version"
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--backbone", "lite0",
            "--weights", "none", "--input-size", "32", "--head-epochs", "1", "--epochs", "1",
            "--lr-schedule", "cosine", "--batch-size", "16", "--cache-dir", str(tmp_path / "cache"),
            "--n-boot", "10", "--no-jit"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = ModelMetadata.model_validate_json((out / "model.json").read_text())
    assert meta.notes.startswith("EfficientNet-Lite0 @ 32px")
    assert "EfficientNet-Lite0" in (out / "model_card.md").read_text()
    store = ModelStore(tmp_path / "store")
    store.set_current(store.add_version(out))
    res = Classifier.from_store(store).predict(np.full((40, 60, 3), 128, dtype=np.uint8))
    assert set(res.probabilities) == set(CLASS_NAMES) and res.predicted_class in CLASS_NAMES


@pytest.mark.slow
def test_retraining_product_trainer_uses_the_default_recipe_with_overrides(tmp_path):
    """The retrain worker's default trainer: TrainConfig defaults (Lite0) + JSON overrides."""
    from tests.retraingen import resolved_rows, write_tiny_dataset
    from worker.retrain.training import TrainRequest, train_product

    data = write_tiny_dataset(tmp_path / "data", per_class=6)
    req = TrainRequest(manifest=resolved_rows(data), out=tmp_path / "challenger", parent_version="champion-1",
                       champion_dir=None, cache_dir=tmp_path / "cache", command="retrain test",
                       options={"input_size": 32, "weights": "none", "head_epochs": 1, "epochs": 1,
                                "n_boot": 10, "jit_compile": False, "not_a_field": 1})
    meta = train_product(req)
    assert meta.notes.startswith("EfficientNet-Lite0 @ 32px, weights none")
    assert meta.parent_version == "champion-1" and meta.training_command == "retrain test"
    assert (tmp_path / "challenger" / "model.keras").is_file()
