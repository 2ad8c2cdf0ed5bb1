"""``melanoma-triage adapt`` on generated data: AdaBN statistics, the label-free threshold
shift, the locked-set sensitivity guard, and the derived version through the store,
its LiteRT export and ``models promote``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from schemas import CLASS_NAMES, MELANOMA_INDEX, ModelMetadata, TriageThresholds
from tests.test_datachecks import blob_jpeg
from worker.calibration import adapt
from worker.store.versions import METADATA_FILE, MODEL_FILE, file_sha256

SIZE = 16
NEVUS = CLASS_NAMES.index("nevus")


def bn_model(seed: int = 0):
    """RGB in -> mean colour -> BatchNorm -> nine logits (melanoma: more red, less blue)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="rgb")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    logits = keras.layers.Dense(len(CLASS_NAMES), name="logits")(x)
    model = keras.Model(inputs, logits)
    kernel = np.zeros((3, len(CLASS_NAMES)), np.float32)
    kernel[:, MELANOMA_INDEX] = [12.0, 0.0, -12.0]
    kernel[:, NEVUS] = [-12.0, 0.0, 12.0]
    model.get_layer("logits").set_weights([kernel, np.zeros(len(CLASS_NAMES), np.float32)])
    bn = model.get_layer("bn")
    bn.set_weights([np.ones(3), np.zeros(3), np.full(3, 0.5), np.full(3, 0.04)])
    return model


def images(n: int, red: float, blue: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array([red, 120.0, blue])
    x = base + rng.normal(0, 25, (n, 1, 1, 3)) + rng.normal(0, 4, (n, SIZE, SIZE, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def meta(threshold: float = 0.5) -> ModelMetadata:
    return ModelMetadata(version="base-1", created_at=datetime.now(UTC), sha256="0" * 64, input_size=SIZE,
                         thresholds=TriageThresholds(urgent_melanoma=threshold, soon_keratinocyte=0.5,
                                                     min_confidence=0.2))


def locked(seed: int = 1) -> adapt.LockedSet:
    mel, nev = images(20, 170, 90, seed), images(60, 100, 160, seed + 1)
    return adapt.LockedSet(images=np.concatenate([mel, nev]), melanoma=np.r_[np.ones(20), np.zeros(60)].astype(int),
                           labels=np.r_[np.full(20, MELANOMA_INDEX), np.full(60, NEVUS)])


def test_adabn_sets_moving_statistics_to_the_site_batches():
    model = bn_model()
    site = images(64, 200, 60, seed=3)
    n = adapt.adapt_batchnorm(model, site, batch_size=32)
    assert n == 1
    pooled = site.astype(np.float64).mean(axis=(1, 2)) / 255.0
    mean, var = model.get_layer("bn").moving_mean.numpy(), model.get_layer("bn").moving_variance.numpy()
    expected_var = np.mean([pooled[:32].var(axis=0), pooled[32:].var(axis=0)], axis=0)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(var, expected_var, rtol=1e-3)
    assert model.get_layer("bn").momentum == pytest.approx(0.99)  # restored


def test_adabn_reaches_nested_models():
    import keras

    inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="inner_bn")], name="inner")
    inputs = keras.Input((SIZE, SIZE, 3))
    out = inner(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, out)
    inner.trainable = False  # frozen as after fine-tuning: still re-estimated
    assert len(adapt.batchnorm_layers(model)) == 1
    adapt.adapt_batchnorm(model, images(32, 90, 90, seed=4))
    assert np.all(model.get_layer("inner").get_layer("inner_bn").moving_mean.numpy() > 50)
    assert inner.trainable is False


def _bn_outputs(model, x: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(keras.Model(model.inputs, model.get_layer("bn").output)(x.astype(np.float32), training=False))


def test_aligned_batchnorm_maps_site_activations_onto_the_source():
    model = bn_model()
    source = locked().images
    site = images(64, 220, 50, seed=8)  # another camera: redder, less blue
    want = _bn_outputs(model, source)
    assert abs(_bn_outputs(model, site).mean(axis=0) - want.mean(axis=0)).max() > 0.5
    assert adapt.adapt_batchnorm_aligned(model, site, source) == 1
    got = _bn_outputs(model, site)
    np.testing.assert_allclose(got.mean(axis=0), want.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(got.std(axis=0), want.std(axis=0), rtol=1e-3)
    np.testing.assert_allclose(_bn_outputs(bn_model(), source), want)  # a fresh model is untouched


def test_aligned_batchnorm_reaches_nested_models():
    import keras

    inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="inner_bn")], name="inner")
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, inner(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))))
    source, site = images(40, 100, 100, seed=9), images(40, 180, 60, seed=10)
    want = np.asarray(model(source.astype(np.float32))).mean(axis=0)
    adapt.adapt_batchnorm_aligned(model, site, source)
    np.testing.assert_allclose(np.asarray(model(site.astype(np.float32))).mean(axis=0), want, atol=1e-3)


def test_threshold_follows_the_shift_but_the_locked_guard_caps_it():
    lock = locked()
    brighter = images(80, 230, 40, seed=5)  # a site whose images all look red: a large upward shift
    p = adapt.propose(bn_model(), meta(0.5), brighter, lock, adapt.AdaptPolicy(bn=False, direction="both"))
    assert p.shift_log_odds > 1
    assert p.shifted_threshold > p.locked_ceiling
    assert p.threshold == pytest.approx(p.locked_ceiling)
    assert p.locked["after"]["sensitivity"] >= 0.95
    assert p.passed, p.gate["reasons"]
    down = adapt.propose(bn_model(), meta(0.5), brighter, lock, adapt.AdaptPolicy(bn=False))
    assert down.shift_log_odds == pytest.approx(p.shift_log_odds)
    assert down.shifted_threshold == pytest.approx(0.5)  # the default never raises it
    assert down.threshold == pytest.approx(min(0.5, down.locked_ceiling))


def test_no_shift_no_move_and_a_downward_shift_lowers_the_threshold():
    lock = locked()
    same = adapt.propose(bn_model(), meta(0.2), lock.images, lock, adapt.AdaptPolicy(bn=False))
    assert same.shift_log_odds == pytest.approx(0.0, abs=1e-9)
    assert same.threshold == pytest.approx(min(0.2, same.locked_ceiling))
    bluer = adapt.propose(bn_model(), meta(0.2), images(80, 60, 220, seed=6), lock, adapt.AdaptPolicy(bn=False))
    assert bluer.shift_log_odds < 0 and bluer.threshold < 0.2


def test_refuses_too_few_images_or_a_locked_set_without_melanoma():
    lock = locked()
    with pytest.raises(adapt.AdaptRefused, match="adapt needs 50"):
        adapt.propose(bn_model(), meta(), images(10, 100, 100, 7), lock)
    benign = adapt.LockedSet(lock.images[20:], lock.melanoma[20:], lock.labels[20:])
    with pytest.raises(adapt.AdaptRefused, match="no melanoma"):
        adapt.propose(bn_model(), meta(), images(60, 100, 100, 7), benign)


def _version_with_split(folder: Path, data: Path) -> str:
    """A BN model version whose split.csv puts the generated data set in its test split."""
    from worker.training import manifest

    model = bn_model()
    folder.mkdir(parents=True)
    model.save(folder / MODEL_FILE)
    m = meta(0.5).model_copy(update={"version": "bn-base-1", "sha256": file_sha256(folder / MODEL_FILE)})
    (folder / METADATA_FILE).write_text(m.model_dump_json(indent=1))
    rows = manifest.scan([data]).manifest
    rows.assign(subset="test")[["image_id", "sha256", "source", "subset"]].to_csv(folder / "split.csv", index=False)
    (folder / "model_card.md").write_text("# base card\n")
    return m.version


def _colour_jpeg(path: Path, rgb: tuple, seed: int) -> None:
    """Skin of roughly ``rgb`` with a darker lesion in the middle (passes the quality gate)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb) + rng.normal(0, 20, 3) + rng.normal(0, 6, (48, 48, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    dark = tuple(int(c * 0.55) for c in arr[0, 0])
    ImageDraw.Draw(img).ellipse([12, 12, 36, 36], fill=dark)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)


@pytest.fixture
def adapt_home(tmp_path, monkeypatch, settings):
    from worker.classify.export import ensure_export
    from worker.store.versions import ModelStore

    data = tmp_path / "data" / "isic-9class" / "train"
    for k in range(14):
        _colour_jpeg(data / "melanoma" / f"ISIC_{k:07d}.jpg", (180, 120, 80), k)
        _colour_jpeg(data / "nevus" / f"ISIC_{100 + k:07d}.jpg", (90, 120, 170), 100 + k)
    blob_jpeg(data / "nevus" / "ISIC_0000999.jpg", "nevus", 48, 999)
    site = tmp_path / "site"
    for k in range(60):  # a warmer camera: everything redder
        _colour_jpeg(site / f"img{k:03d}.jpg", (200, 110, 120) if k % 5 else (230, 100, 60), 500 + k)
    (site / "notes.txt").write_text("not an image")
    (site / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    store = ModelStore(settings.model_store_dir, export=ensure_export)
    staging = tmp_path / "staging"
    base = _version_with_split(staging, tmp_path / "data")
    store.set_current(store.add_version(staging))
    monkeypatch.setenv("TRIAGE_HOME", str(settings.home))
    return settings, store, base, tmp_path / "data", site


def test_adapt_command_writes_a_version_that_promote_accepts(adapt_home):
    from worker.cli.main import app

    settings, store, base, data, site = adapt_home
    runner = CliRunner()
    result = runner.invoke(app, ["adapt", "--images", str(site), "--data", str(data), "--bn", "--home",
                                 str(settings.home)])
    assert result.exit_code == 0, (result.output, result.exception)
    added = result.stdout.strip().splitlines()[-1]
    assert added in store.list_versions() and added != base
    assert store.current_version() == base  # proposed, not current
    m = store.metadata(added)
    assert m.parent_version == base and "-adapt-" in added
    assert m.sha256 != store.metadata(base).sha256  # BatchNorm statistics changed
    prov = m.metrics["adapt"]
    assert prov["bn_layers"] == 1 and prov["n_site_images"] == 60 and prov["locked"]["after"]["sensitivity"] >= 0.95
    assert m.thresholds.urgent_melanoma == pytest.approx(prov["threshold"])
    folder = store.version_dir(added)
    assert (folder / "model.tflite").is_file() and (folder / "serving.json").is_file()
    assert json.loads((folder / "serving.json").read_text())  # exported from the adapted weights
    assert json.loads((folder / adapt.ADAPTATION_FILE).read_text())["base_version"] == base
    assert "Unlabelled site adaptation" in (folder / "model_card.md").read_text()
    assert "1 unreadable or unusable" in result.stdout
    promoted = runner.invoke(app, ["models", "promote", added, "--reason", "site adaptation", "--home",
                                   str(settings.home)])
    assert promoted.exit_code == 0, promoted.output
    assert store.current_version() == added


def test_adapt_threshold_only_keeps_the_weights_and_dry_run_adds_nothing(adapt_home):
    from worker.cli.main import app

    settings, store, base, data, site = adapt_home
    runner = CliRunner()
    dry = runner.invoke(app, ["adapt", "--images", str(site), "--data", str(data), "--dry-run", "--bn", "--bn-mode", "site", "--home",
                              str(settings.home)])
    assert dry.exit_code == 0, dry.output
    assert "dry run: no version added" in dry.stdout
    assert not [v for v in store.list_versions() if "-adapt-" in v]
    result = runner.invoke(app, ["adapt", "--images", str(site), "--data", str(data), "--home",
                                 str(settings.home)])  # the default: the threshold alone
    assert result.exit_code == 0, result.output
    added = result.stdout.strip().splitlines()[-1]
    assert store.metadata(added).sha256 == store.metadata(base).sha256
    prov = store.metadata(added).metrics["adapt"]
    assert prov["shift_log_odds"] > 0 and prov["threshold"] <= prov["base_threshold"]  # down only


def test_adapt_refuses_without_enough_images_or_a_source(adapt_home, tmp_path):
    from worker.cli.main import app

    settings, store, base, data, _ = adapt_home
    few = tmp_path / "few"
    for k in range(3):
        _colour_jpeg(few / f"{k}.jpg", (120, 120, 120), k)
    runner = CliRunner()
    refused = runner.invoke(app, ["adapt", "--images", str(few), "--data", str(data), "--home", str(settings.home)])
    assert refused.exit_code == 1 and "adapt needs 50" in refused.output
    neither = runner.invoke(app, ["adapt", "--home", str(settings.home)])
    assert neither.exit_code != 0 and "--images FOLDER or --since DATE" in neither.output
    assert not [v for v in store.list_versions() if "-adapt-" in v]


def test_adapt_from_the_archive_since_a_date(adapt_home, sessions):
    from worker.cli.main import app
    from worker.db.models import Image
    from worker.intake import archive

    settings, store, base, data, site = adapt_home
    with sessions() as s:
        for k, path in enumerate(sorted(site.glob("img*.jpg"))):
            blob = path.read_bytes()
            stored = archive.store(settings.archive_dir, blob)
            received = datetime(2026, 1, 1, tzinfo=UTC) if k < 10 else datetime(2026, 6, 1, tzinfo=UTC)
            s.add(Image(sha256=archive.sha256_bytes(blob), archive_path=str(stored), size_bytes=len(blob),
                        source_door="folder", received_at=received))
        s.commit()
    runner = CliRunner()
    result = runner.invoke(app, ["adapt", "--since", "2026-03-01", "--data", str(data), "--min-images", "40",
                                 "--json", "--home", str(settings.home)])
    assert result.exit_code == 0, (result.output, result.exception)
    out = json.loads(result.stdout)
    assert out["n_site_images"] == 50 and out["added_version"] in store.list_versions()
    assert pd.Timestamp(out["created_at"]) is not None
