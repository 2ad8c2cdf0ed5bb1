"""Cached-feature training on generated data: extraction once per image and view (resumable),
heads trained on the cache, a head put back on its backbone, and the LOSO recipe search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas import CLASS_NAMES, MELANOMA_INDEX
from worker.training import datachecks, dataset, feature_search, features, manifest

SIZE = 32


def tiny_net(seed: int = 0):
    """A classifier network in the trainer's shape: ... -> ``pool`` -> dropout -> ``logits``."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="rgb")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(len(CLASS_NAMES), name="logits")(x))


@pytest.fixture(scope="module")
def four_rows(tmp_path_factory):
    from tests.test_four_sources import make_four_sources

    root = tmp_path_factory.mktemp("four-feat")
    make_four_sources(root)
    rows = datachecks.check_and_resolve(manifest.scan([root])).resolved
    images = dataset.build_cache(rows, SIZE, tmp_path_factory.mktemp("cache"), progress=False)
    return rows, images


def test_extract_caches_views_and_resumes(four_rows, tmp_path, monkeypatch):
    rows, images = four_rows
    net = tiny_net()
    monkeypatch.setattr(features, "CHUNK", 8)
    feats = features.extract(net, images, tmp_path, views=2, augmentation="camera", seed=1)
    assert feats.shape == (2, len(images), 8) and feats.dtype == np.float16
    expected = np.asarray(features.feature_model(net)(images[:8].astype(np.float32)))
    np.testing.assert_allclose(feats[0, :8], expected, rtol=1e-2, atol=1e-3)
    assert not np.allclose(feats[0], feats[1], atol=1e-3)  # view 1 is augmented
    # a rerun reads the chunks instead of running the network: a broken network proves it
    chunk = tmp_path / "view1-chunk0001.npy"
    saved = np.load(chunk)
    chunk.unlink()  # as if interrupted in this chunk
    again = features.extract(net, images, tmp_path, views=2, augmentation="camera", seed=1)
    np.testing.assert_array_equal(again[0], feats[0])
    np.testing.assert_allclose(np.load(chunk), saved, atol=1e-3)  # the same seeded view is rebuilt


def test_head_on_cached_features_learns_and_reattaches(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 300, 16
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, d)) + y[:, None] * 1.5
    feats = np.stack([x, x + rng.normal(0, 0.1, x.shape)]).astype(np.float16)
    labels = np.where(y == 1, "melanoma", "nevus")
    rows = pd.DataFrame({"label": labels, "melanoma": y, "source": "ham10000"})
    masks = dataset.label_masks(rows)
    recipe = features.HeadRecipe("t", epochs=20, views=2, lr=1e-2)
    head = features.train_head(feats, masks, recipe, seed=3)
    p = feature_search.softmax(features.head_logits(head, feats))[:, MELANOMA_INDEX]
    assert feature_search.auc(y, p) > 0.9
    net = tiny_net()
    small = features.train_head(np.zeros((1, 4, 8), np.float16), dataset.label_masks(rows.iloc[:4]),
                                features.HeadRecipe("s", hidden=4, epochs=1), seed=1)
    whole = features.attach_head(net, small)
    img = np.full((2, SIZE, SIZE, 3), 120.0, np.float32)
    direct = np.asarray(small(np.asarray(features.feature_model(net)(img)), training=False))
    np.testing.assert_allclose(np.asarray(whole(img, training=False)), direct, rtol=1e-5, atol=1e-5)
    assert whole.output_shape == (None, len(CLASS_NAMES))


def test_melanoma_only_masks_hide_the_isic2017_diagnosis():
    rows = pd.DataFrame({"label": ["seborrheic_keratosis", "seborrheic_keratosis", "melanoma"],
                         "melanoma": [0, 0, 1], "source": ["isic2017", "derm7pt", "isic2017"]})
    three = features.training_masks(rows, True)
    hidden = features.training_masks(rows, False)
    sk = CLASS_NAMES.index("seborrheic_keratosis")
    assert three[0].sum() == 1 and three[0, sk] == 1
    assert hidden[0].sum() == len(CLASS_NAMES) - 1 and hidden[0, MELANOMA_INDEX] == 0
    assert hidden[1].sum() == 1 and hidden[2, MELANOMA_INDEX] == 1


def test_specificity_at_sensitivity_and_sk_recall():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.75, 0.05])
    thr, spec = feature_search.specificity_at_sensitivity(y, p, 0.95)
    assert thr == pytest.approx(0.2) and spec == pytest.approx(0.5)  # 0.1 and 0.05 below it
    sk = CLASS_NAMES.index("seborrheic_keratosis")
    assert feature_search.sk_recall(np.array([sk, sk, 0]), np.array([sk, 0, 0])) == pytest.approx(0.5)


def test_search_on_four_sources_ranks_by_worst_fold_and_resumes(four_rows, tmp_path):
    rows, images = four_rows
    rows = rows.reset_index(drop=True)
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (len(rows), 12)) + rows["melanoma"].to_numpy()[:, None] * 2.0
    (tmp_path / "features").mkdir()
    np.save(tmp_path / "features" / "view0-chunk0000.npy", base.astype(np.float16))
    recipes = [features.HeadRecipe("a", epochs=15, lr=1e-2), features.HeadRecipe("b", epochs=1, lr=1e-4)]
    assert feature_search.run_search(tmp_path, recipes, [1, 2], 1, rows, progress=lambda m: None) == 0
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["folds"] == sorted(set(rows["source"]))
    assert set(summary["recipes"]["a"]["folds"]) == {*summary["folds"], "own"}
    worst = {n: r["worst_fold_auc"] for n, r in summary["recipes"].items()}
    assert summary["ranking_by_worst_fold"] == sorted(worst, key=lambda n: -worst[n])
    d7 = summary["recipes"]["a"]["folds"]["derm7pt"]
    assert d7["auc_min"] <= d7["auc_mean"] <= d7["auc_max"] and d7["seeds"] == [1, 2]
    assert "worst" in (tmp_path / "search.md").read_text()
    # finished runs are read back, not retrained
    done = tmp_path / "search" / "a" / "derm7pt-s1.json"
    stamp = json.loads(done.read_text()) | {"melanoma_auc": 0.123}
    done.write_text(json.dumps(stamp))
    feature_search.run_search(tmp_path, recipes[:1], [1], 1, rows, progress=lambda m: None)
    again = json.loads((tmp_path / "search.json").read_text())
    assert again["recipes"]["a"]["folds"]["derm7pt"]["auc_mean"] == pytest.approx(0.123)


def test_fold_indices_leave_the_held_out_source_out(four_rows):
    rows, _ = four_rows
    tr, te = feature_search.fold_indices(rows, "isic2017")
    assert set(rows.iloc[te]["source"]) == {"isic2017"} and "isic2017" not in set(rows.iloc[tr]["source"])
    own_tr, own_te = feature_search.own_indices(rows)
    assert not set(own_tr) & set(own_te) and len(own_tr) + len(own_te) == len(rows)


def test_weight_power_is_a_recipe_field_that_reaches_the_sample_weights(tmp_path):
    from worker.training.config import TrainConfig, recipe, same_recipe
    from worker.training.train import SplitArrays

    rows = pd.DataFrame({"label": ["nevus"] * 6 + ["melanoma"] * 2, "melanoma": [0] * 6 + [1] * 2})
    masks = dataset.label_masks(rows)
    n = len(rows)
    arrays = dict(images=np.zeros((n, 2, 2, 3), np.uint8), masks=masks, labels=dataset.label_indices(rows),
                  melanoma=rows["melanoma"].to_numpy(), train=np.ones(n, bool), val=np.zeros(n, bool),
                  test=np.zeros(n, bool))
    _, _, flat = SplitArrays(**arrays, weight_power=0.0).training()
    _, _, root = SplitArrays(**arrays).training()
    np.testing.assert_allclose(flat, 1.0)
    assert root[-1] > root[0]  # the rare class weighs more under the default (square root)
    cfg = TrainConfig(data=(), out=tmp_path, weight_power=0.0)
    assert recipe(cfg)["weight_power"] == 0.0
    older = {k: v for k, v in recipe(TrainConfig(data=(), out=tmp_path)).items() if k != "weight_power"}
    assert same_recipe(older, recipe(TrainConfig(data=(), out=tmp_path)))  # records from before the field
    assert not same_recipe(older, recipe(cfg))


def test_train_command_takes_weight_power():
    from typer.testing import CliRunner

    from worker.cli.main import app

    out = CliRunner().invoke(app, ["train", "--help"])
    assert out.exit_code == 0 and "--weight-power" in out.stdout
