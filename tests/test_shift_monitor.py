"""Shift monitor without labels (issue 12, item 5), on generated references and traffic."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from schemas import CLASS_NAMES, TriageThresholds
from tests import sitegen
from worker.classify.triage import decide
from worker.monitor import reference as ref
from worker.monitor import shift
from worker.store.versions import METADATA_FILE, ModelStore

THRESHOLDS = TriageThresholds(urgent_melanoma=0.3, soon_keratinocyte=0.5, min_confidence=0.2)


def _records(n: int = 400, seed: int = 0, mel_mean: float = -2.5, gains=(1.0, 1.0, 1.0)) -> list[ref.ImageRecord]:
    rng = np.random.default_rng(seed)
    mel = 1 / (1 + np.exp(-rng.normal(mel_mean, 1.5, n)))
    ker = rng.uniform(0, 0.3, n) * (1 - mel)
    stats = [{"brightness": 150 * gains[1] + rng.normal(0, 10), "contrast": 30 + rng.normal(0, 3),
              "saturation": 0.3 + rng.normal(0, 0.03), "red_blue": 60 * gains[0] - 60 * (gains[2] - 1) * 2
              + rng.normal(0, 8)} for _ in range(n)]
    return [ref.ImageRecord(float(m), float(k), float(max(m, k, 1 - m - k)), True, s)
            for m, k, s in zip(mel, ker, stats)]


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 5000)
    dist = ref.distribution(base)
    assert shift.psi(dist["fractions"], ref.bin_counts(rng.normal(0, 1, 400), dist["edges"])) < 0.05
    assert shift.psi(dist["fractions"], ref.bin_counts(rng.normal(1, 1, 400), dist["edges"])) > shift.PSI_WARN
    assert np.isfinite(shift.psi(dist["fractions"], ref.bin_counts(np.full(50, 9.0), dist["edges"])))


def test_vectorised_triage_rates_match_the_product_rule() -> None:
    recs = _records(300, seed=3)
    rates = ref.triage_rates([r.melanoma for r in recs], [r.keratinocyte for r in recs],
                             [r.top for r in recs], THRESHOLDS)
    levels = []
    for r in recs:
        probs = dict.fromkeys(CLASS_NAMES, 0.0) | {"melanoma": r.melanoma, "basal_cell_carcinoma": r.keratinocyte,
                                                  "nevus": 1 - r.melanoma - r.keratinocyte}
        levels.append(decide(probs, THRESHOLDS).value)
    for level, rate in rates.items():
        assert rate == pytest.approx(levels.count(level) / len(levels))


def test_reference_document_round_trips(tmp_path) -> None:
    doc = ref.build_reference("v1", _records(), THRESHOLDS, "generated")
    path = ref.save_reference(tmp_path, doc)
    loaded = ref.Reference(json.loads(path.read_text()))
    assert loaded.version == "v1" and loaded.data["n_images"] == 400
    assert loaded.expected_rates(THRESHOLDS)["urgent"] == pytest.approx(doc["rates"]["urgent"])
    stricter = THRESHOLDS.model_copy(update={"urgent_melanoma": 0.6})
    assert loaded.expected_rates(stricter)["urgent"] < doc["rates"]["urgent"]
    fr = loaded.distribution("melanoma_probability")["fractions"]
    assert sum(fr) == pytest.approx(1.0) and max(fr) < 0.2
    assert set(loaded.data["distributions"]) == {"melanoma_probability", *ref.IMAGE_STATISTICS}


def _rows(recs: list[ref.ImageRecord], thresholds=THRESHOLDS) -> list[shift.LiveRow]:
    rows = []
    for r in recs:
        probs = dict.fromkeys(CLASS_NAMES, 0.0) | {"melanoma": r.melanoma, "basal_cell_carcinoma": r.keratinocyte,
                                                  "nevus": 1 - r.melanoma - r.keratinocyte}
        rows.append(shift.LiveRow(r.melanoma, r.keratinocyte, r.top, decide(probs, thresholds).value, True, None))
    return rows


def test_same_site_is_quiet_and_a_shifted_site_warns() -> None:
    reference = ref.Reference(ref.build_reference("v1", _records(1000), THRESHOLDS, "generated"))
    quiet = shift.compare(reference, THRESHOLDS, _rows(_records(200, seed=1)), version="v1")
    assert quiet.warnings == [] and quiet.n == 200
    loud = shift.compare(reference, THRESHOLDS, _rows(_records(200, seed=2, mel_mean=0.5)), version="v1")
    by_name = {f.name: f for f in loud.findings}
    assert by_name["urgent_rate"].level == "warn"
    assert by_name["melanoma_probability"].level == "warn"
    assert any(m.startswith("urgent rate 0.") and "over the last 200 images" in m and m.endswith("expected")
               for m in loud.warnings)


def test_too_little_traffic_is_said_not_judged() -> None:
    reference = ref.Reference(ref.build_reference("v1", _records(), THRESHOLDS, "generated"))
    report = shift.compare(reference, THRESHOLDS, _rows(_records(10)))
    assert report.findings == [] and "too little traffic" in report.problem
    assert "too little traffic" in "\n".join(shift.format_lines(report))


def test_unusable_images_are_a_finding_of_their_own() -> None:
    reference = ref.Reference(ref.build_reference("v1", _records(), THRESHOLDS, "generated"))
    rows = _rows(_records(200, seed=4))
    rows += [shift.LiveRow(0.0, 0.0, 1.0, "indeterminate", False, None)] * 100
    report = shift.compare(reference, THRESHOLDS, rows)
    unusable = next(f for f in report.findings if f.name == "unusable_rate")
    assert unusable.level == "warn" and "share of unusable images 0.33" in unusable.message


def _version_dir(root, version: str, sha: str, parent: str | None = None, temperature: float = 1.0):
    from datetime import datetime, timezone

    from schemas import ModelMetadata

    folder = root / "versions" / version
    folder.mkdir(parents=True)
    meta = ModelMetadata(version=version, created_at=datetime.now(timezone.utc), sha256=sha, input_size=32,
                         temperature=temperature, thresholds=THRESHOLDS, parent_version=parent)
    (folder / METADATA_FILE).write_text(meta.model_dump_json())
    return folder


def test_reference_falls_back_to_a_parent_with_the_same_weights(tmp_path) -> None:
    store = ModelStore(tmp_path / "store")
    ref.save_reference(_version_dir(store.root, "base", "a" * 64), ref.build_reference("base", _records(), THRESHOLDS, "g"))
    _version_dir(store.root, "site", "a" * 64, parent="base")
    _version_dir(store.root, "retrained", "b" * 64, parent="base")
    _version_dir(store.root, "recalibrated", "a" * 64, parent="base", temperature=2.0)
    empty = tmp_path / "shipped"
    assert ref.load_reference(store, "site", shipped=empty).version == "base"
    assert ref.load_reference(store, "retrained", shipped=empty) is None
    assert ref.load_reference(store, "recalibrated", shipped=empty) is None
    shipped = ModelStore(tmp_path / "shipped")
    ref.save_reference(_version_dir(shipped.root, "retrained", "b" * 64),
                       ref.build_reference("retrained", _records(), THRESHOLDS, "g"))
    assert ref.load_reference(store, "retrained", shipped=shipped.root).version == "retrained"


def test_check_reads_the_latest_reported_predictions(sessions, settings, store_with_tiny_model, caplog) -> None:
    store = store_with_tiny_model
    version = store.current_version()
    thresholds = store.metadata(version).thresholds
    no_ref = shift.check(sessions, store)
    assert "no reference.json" in no_ref.problem
    ref.save_reference(store.version_dir(version), ref.build_reference(version, _records(600), thresholds, "g"))
    rng = np.random.default_rng(5)
    for i, p in enumerate(1 / (1 + np.exp(-rng.normal(1.0, 1.0, 80)))):  # a site with many high scores
        sitegen.add_case(sessions, settings.archive_dir, version, thresholds, float(p), seed=i)
    sitegen.add_case(sessions, settings.archive_dir, version, thresholds, 0.01, seed=999, shadow=True)
    with caplog.at_level(logging.WARNING, logger="worker.monitor.shift"):
        report = shift.warn_if_shifted(sessions, store, window=200)
    assert report.n == 80  # the shadow row is not live traffic
    assert any("urgent rate" in m for m in report.warnings)
    assert any("site shift" in r.getMessage() and "urgent rate" in r.getMessage() for r in caplog.records)
    summary = shift.status_summary(settings.database_url, settings.model_store_dir)
    assert summary["n"] == 80 and summary["warnings"] == report.warnings
    small = shift.check(sessions, store, window=60, images=True)
    assert small.n == 60 and any(f.name == "brightness" for f in small.findings)
    assert shift.format_lines(small)[0].startswith(f"Site shift (model {version}, last 60 images)")


def test_monitor_commands(tmp_path, sessions, settings, store_with_tiny_model) -> None:
    from typer.testing import CliRunner

    from tests.nondermgen import save_png
    from tests.imagegen import lesion_rgb
    from worker.monitor.cli import monitor_app

    store = store_with_tiny_model
    version = store.current_version()
    folder = tmp_path / "val"
    folder.mkdir()
    for i in range(6):
        save_png(lesion_rgb((48, 48), seed=i), folder / f"{i}.png")
    save_png(np.zeros((48, 48, 3), np.uint8), folder / "black.png")
    runner = CliRunner()
    out = runner.invoke(monitor_app, ["reference", version, "--data", str(folder), "--subset", "all",
                                      "--home", str(settings.home), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads((store.version_dir(version) / ref.REFERENCE_FILE).read_text())
    assert doc["n_images"] == 7 and doc["n_usable"] == 6 and len(doc["scores"]["melanoma"]) == 7
    out = runner.invoke(monitor_app, ["shift", "--home", str(settings.home), "--json"])
    assert out.exit_code == 0, out.output
    assert "too little traffic" in json.loads(out.stdout)["problem"]


def test_traffic_reference_makes_the_site_its_own_baseline(sessions, settings, store_with_tiny_model) -> None:
    store = store_with_tiny_model
    version = store.current_version()
    thresholds = store.metadata(version).thresholds
    rng = np.random.default_rng(7)
    for i, p in enumerate(1 / (1 + np.exp(-rng.normal(1.0, 1.0, 120)))):
        sitegen.add_case(sessions, settings.archive_dir, version, thresholds, float(p), seed=i)
    assert shift.traffic_reference(sessions, [version], "site-1", thresholds, min_images=200) is None
    doc = shift.traffic_reference(sessions, [version], "site-1", thresholds, n=100, min_images=50)
    assert doc["version"] == "site-1" and doc["n_images"] == 100 and "site traffic" in doc["source"]
    reference = ref.Reference(doc)
    with sessions() as s:
        rows = shift.live_window(s, [version, "other"], 120)
    assert len(rows) == 120 and shift.compare(reference, thresholds, rows).warnings == []
