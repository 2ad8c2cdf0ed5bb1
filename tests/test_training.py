"""End-to-end training on a tiny generated data set (no ../shared): the CLI writes a complete
version folder that the model store accepts and the Classifier loads."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from schemas import CLASS_NAMES, ModelMetadata
from tests.test_datachecks import blob_jpeg, make_fixture_data
from worker.classify.export import ensure_export
from worker.store.versions import ModelStore
from worker.training import dataset
from worker.training.cli import register

EXPECTED_FILES = ("model.keras", "model.json", "split.csv", "data_quality.json", "data_quality.md",
                  "calibration.json", "metrics.json", "training_log.csv", "model_card.md",
                  "evaluation.pdf")


def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_show_locals=False)
    register(app)
    return app


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    facts = make_fixture_data(data, per_class=5)
    out = root / "version"
    args = ["train", "--data", str(data), "--out", str(out), "--weights", "none",
            "--input-size", "32", "--head-epochs", "1", "--epochs", "0", "--batch-size", "16",
            "--cache-dir", str(root / "cache"), "--n-boot", "20", "--seed", "7"]
    result = CliRunner().invoke(_app(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root, data, out, facts, result.output


@pytest.mark.slow
def test_train_writes_a_complete_version_folder(trained):
    root, _, out, _, output = trained
    for name in EXPECTED_FILES:
        assert (out / name).is_file(), name
    meta = ModelMetadata.model_validate_json((out / "model.json").read_text())
    assert meta.version in output and meta.version.endswith(meta.sha256[:8])
    assert meta.input_size == 32 and meta.class_names == list(CLASS_NAMES)
    assert meta.temperature > 0 and meta.data_manifest_sha256 and meta.training_command
    assert 0 <= meta.thresholds.urgent_melanoma <= 1
    split = pd.read_csv(out / "split.csv")
    assert list(split.columns) == ["image_id", "sha256", "source", "subset"]
    assert set(split["subset"]) == {"train", "val", "test"}
    log = pd.read_csv(out / "training_log.csv")
    assert len(log) == 1 and "val_loss" in log.columns
    calib = json.loads((out / "calibration.json").read_text())
    assert calib["temperature"] == pytest.approx(meta.temperature)

    store = ModelStore(root / "store", export=ensure_export)
    version = store.add_version(out)
    store.set_current(version)
    assert not (store.version_dir(version) / "checkpoints").exists()

    import numpy as np

    from worker.classify.inference import Classifier

    clf = Classifier.from_store(store)
    res = clf.predict(np.full((40, 60, 3), 128, dtype=np.uint8))
    assert res.model_version == version and set(res.probabilities) == set(CLASS_NAMES)


@pytest.mark.slow
def test_resume_continues_from_checkpoints(trained):
    root, data, out, _, _ = trained
    state_file = out / "checkpoints" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["phase"] == 3 and state["epoch"] == 1
    # as if interrupted after the frozen phase: resume runs one fine-tuning epoch
    state_file.write_text(json.dumps({"phase": 2, "epoch": 1, "best_val_loss": state["best_val_loss"]}))
    args = ["train", "--data", str(data), "--out", str(out), "--weights", "none",
            "--input-size", "32", "--head-epochs", "1", "--epochs", "1", "--batch-size", "16",
            "--cache-dir", str(root / "cache"), "--n-boot", "20", "--seed", "7", "--resume"]
    result = CliRunner().invoke(_app(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    assert list(pd.read_csv(out / "training_log.csv")["epoch"]) == [0, 1]
    assert ModelMetadata.model_validate_json((out / "model.json").read_text()).input_size == 32


@pytest.mark.slow
def test_predict_and_data_commands(trained, tmp_path):
    root, data, out, _, _ = trained
    store = ModelStore(root / "store2", export=ensure_export)
    version = store.add_version(out)
    store.set_current(version)
    img = next((data / "ham10000-224" / "images").iterdir())
    runner = CliRunner()
    res = runner.invoke(_app(), ["predict", str(img), "--store", str(store.root)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])
    assert line["model_version"] == version and line["triage"] in {"urgent", "soon", "routine", "indeterminate"}
    res = runner.invoke(_app(), ["predict", str(img), "--store", str(store.root), "--format", "table"],
                        catch_exceptions=False)
    assert res.exit_code == 0 and version in res.output
    res = runner.invoke(_app(), ["data", "check", "--data", str(data), "--out", str(tmp_path / "dq")],
                        catch_exceptions=False)
    assert res.exit_code == 0 and (tmp_path / "dq" / "data_quality.md").is_file()


@pytest.mark.slow
def test_evaluate_and_describe_commands(trained, tmp_path):
    root, data, out, _, _ = trained
    store = ModelStore(root / "store3", export=ensure_export)
    version = store.add_version(out)
    runner = CliRunner()
    res = runner.invoke(_app(), ["evaluate", "--model", version, "--data", str(data), "--store", str(store.root),
                                 "--out", str(tmp_path / "eval"), "--cache-dir", str(root / "cache"),
                                 "--n-boot", "20"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    split = pd.read_csv(out / "split.csv")
    assert metrics["n"] == (split["subset"] == "test").sum()  # train/val images are excluded
    res = runner.invoke(_app(), ["data", "describe", "--data", str(data), "--out", str(tmp_path / "desc")],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert any((tmp_path / "desc").iterdir())


def test_cosine_lr_by_hand():
    from worker.training.train import cosine_lr

    assert cosine_lr(1e-3, 0, 10) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 5, 10) == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))  # half way: mean
    assert cosine_lr(1e-3, 10, 10) == pytest.approx(2e-5)
    assert cosine_lr(1e-3, 99, 10) == pytest.approx(2e-5)  # clamped past the end


def _resolved_rows(data):
    from worker.training import datachecks, manifest

    return datachecks.run_checks(manifest.scan([data])).resolved


def test_prepare_data_takes_resolved_rows(tmp_path):
    from worker.training.config import TrainConfig
    from worker.training.train import prepare_data

    make_fixture_data(tmp_path / "data", per_class=5)
    rows = _resolved_rows(tmp_path / "data")
    cfg = TrainConfig(data=(), out=tmp_path / "out")
    (tmp_path / "out").mkdir()
    df, man_hash, report = prepare_data(cfg, rows.assign(extra="dropped"))
    assert len(df) == len(rows) and set(df["subset"]) == {"train", "val", "test"}
    assert report["final"]["images"] == len(rows) and len(man_hash) == 64
    assert (tmp_path / "out" / "data_quality.md").is_file() and (tmp_path / "out" / "split.csv").is_file()
    with pytest.raises(ValueError, match="lacks columns"):
        prepare_data(cfg, rows.drop(columns=["sha256"]))


@pytest.mark.slow
def test_train_from_a_resolved_manifest(trained, tmp_path):
    from worker.training.config import TrainConfig
    from worker.training.train import train

    root, data, _, _, _ = trained
    cfg = TrainConfig(data=(), out=tmp_path / "v", input_size=32, weights=None, head_epochs=1, epochs=0,
                      batch_size=16, cache_dir=root / "cache", n_boot=20, seed=7, jit_compile=False,
                      command="test")
    meta = train(cfg, manifest=_resolved_rows(data))
    for name in EXPECTED_FILES:
        assert (tmp_path / "v" / name).is_file(), name
    assert meta.input_size == 32 and meta.data_manifest_sha256


def test_model_card_lists_per_source_rows_from_either_file():
    from datetime import UTC, datetime

    from schemas import TriageThresholds
    from worker.training.model_card import render_model_card

    ci = {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95}
    per_source = {"ham10000": {"n": 10, "n_melanoma": 2, "melanoma_auc": ci, "balanced_accuracy": ci,
                               "urgent_sensitivity": ci, "urgent_specificity": ci, "ece": 0.04}}
    report = {"final": {"images": 10, "per_class": {"nevus": 8}, "per_source": {"ham10000": 10}}}
    th = TriageThresholds(urgent_melanoma=0.2, soon_keratinocyte=0.3, min_confidence=0.4)
    for in_model_json in (True, False):
        meta = ModelMetadata(version="v1", created_at=datetime.now(UTC), sha256="0" * 64, input_size=32,
                             temperature=1.0, thresholds=th,
                             metrics={"test_by_source": per_source} if in_model_json else {})
        card = render_model_card(meta, report, {}, {"n": 10, "per_source": per_source})
        assert "| ham10000 | 10 | 2 | 0.900 (0.800-0.950) |" in card
        assert "| ham10000 | 0.900 (0.800-0.950) | 0.900 (0.800-0.950) | 0.040 |" in card


def test_two_trainings_can_build_the_same_image_cache_at_once(tmp_path, monkeypatch):
    """Both writers finish their file before either renames it (two LOSO folds side by side):
    each must rename its own complete file, and no temp file is left."""
    paths = []
    for k in range(3):
        paths.append(tmp_path / "img" / f"ISIC_{k:07d}.jpg")
        blob_jpeg(paths[-1], "nevus", 40, k)
    df = pd.DataFrame({"path": [str(p) for p in paths], "sha256": [f"{k:064x}" for k in range(3)]})
    both_saved = threading.Barrier(2, timeout=30)
    real_save = np.save

    def save_then_wait(*args, **kwargs):
        real_save(*args, **kwargs)
        both_saved.wait()

    monkeypatch.setattr(np, "save", save_then_wait)
    results, errors = [], []

    def build():
        try:
            results.append(dataset.build_cache(df, 16, tmp_path / "cache", progress=False))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r.shape for r in results] == [(3, 16, 16, 3)] * 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"images-{dataset.cache_key(df, 16)}.npy"]
    assert np.array_equal(np.load(tmp_path / "cache" / f"images-{dataset.cache_key(df, 16)}.npy"),
                          results[0])
