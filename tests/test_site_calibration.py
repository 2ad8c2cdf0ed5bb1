"""Site calibration (issue 12, item 4) on generated sites: thresholds, evidence, gate, version."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tests import sitegen
from worker.calibration import site
from worker.calibration import thresholds as th
from worker.monitor.reference import load_reference
from worker.store import admin


def _scores(rng, n_pos: int, n_neg: int, pos=(-0.5, 1.2), neg=(-3.5, 1.2)):
    s = np.concatenate([rng.normal(*pos, n_pos), rng.normal(*neg, n_neg)])
    return np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)], 1 / (1 + np.exp(-s))


def test_threshold_rule_matches_the_training_rule() -> None:
    y = np.array([1, 1, 1, 1, 0, 0], bool)
    s = np.array([0.9, 0.5, 0.4, 0.2, 0.3, 0.1])
    assert th.threshold_for(y, s, 1.0) == 0.2
    assert th.threshold_for(y, s, 0.75) == 0.4
    assert th.sens_spec(y, s, 0.4) == (0.75, 1.0)
    assert th.threshold_for(np.zeros(3, bool), s[:3], 0.95) == 0.0


def test_operating_point_reports_intervals_and_out_of_bag_estimates() -> None:
    y, s = _scores(np.random.default_rng(0), 40, 200)
    op = th.choose_operating_point(y, s, 0.95, n_boot=300)
    assert op.n_positive == 40 and op.n_negative == 200
    assert op.sensitivity.low <= op.sensitivity.value <= op.sensitivity.high
    assert op.specificity.low <= op.specificity.value <= op.specificity.high
    assert op.expected_sensitivity >= 0.95 or op.in_sample_target == 1.0
    assert op.in_sample_target in th.TARGET_GRID


def test_out_of_bag_choice_keeps_sensitivity_on_new_cases() -> None:
    """Chosen on 30 melanomas, judged on 20,000 new ones from the same site: the out-of-bag
    rule keeps the promise on average and is safer than the naive in-sample 0.95 rule (whose
    threshold, the second-lowest of 30 melanoma scores, lets 2 in 31 new melanomas through)."""
    fresh_y, fresh_s = _scores(np.random.default_rng(99), 20000, 0)
    chosen, naive = [], []
    for seed in range(20):
        y, s = _scores(np.random.default_rng(seed), 30, 120)
        op = th.choose_operating_point(y, s, 0.95, n_boot=150, seed=seed)
        chosen.append(th.sens_spec(fresh_y, fresh_s, op.threshold)[0])
        naive.append(th.sens_spec(fresh_y, fresh_s, th.threshold_for(y, s, 0.95))[0])
    assert np.mean(chosen) >= 0.95 and np.mean(chosen) > np.mean(naive) + 0.01


def _site(sessions, settings, store, n_mel=40, n_benign=150, seed=0, **kw):
    version = store.current_version()
    sitegen.add_site(sessions, settings.archive_dir, version, store.metadata(version).thresholds,
                     n_mel, n_benign, seed=seed, **kw)
    return version


def _calibrated_site(sessions, settings, store, n=240, seed=1):
    """A site whose probabilities are honest (the calibration gate can pass)."""
    version = store.current_version()
    n_mel = sitegen.add_calibrated_site(sessions, settings.archive_dir, version,
                                        store.metadata(version).thresholds, n, seed=seed)
    assert n_mel >= 30 and n - n_mel >= 100
    return version


def test_too_few_cases_are_refused_with_the_counts(sessions, settings, store_with_tiny_model) -> None:
    version = _site(sessions, settings, store_with_tiny_model, n_mel=12, n_benign=150)
    with sessions() as s:
        cases = site.gather_cases(s, store_with_tiny_model, version)
    with pytest.raises(site.CalibrationRefused, match="12 melanomas and 150 other lesions usable, 30 and 100"):
        site.propose(cases, store_with_tiny_model.metadata(version))


def test_unusable_and_unlabelled_cases_are_left_out(sessions, settings, store_with_tiny_model) -> None:
    store = store_with_tiny_model
    version = _site(sessions, settings, store, n_mel=5, n_benign=5)
    t = store.metadata(version).thresholds
    sitegen.add_case(sessions, settings.archive_dir, version, t, 0.9, usable=False, diagnosis="melanoma", seed=777)
    sitegen.add_case(sessions, settings.archive_dir, version, t, 0.9, seed=778)  # no truth yet
    sitegen.add_case(sessions, settings.archive_dir, "other-weights", t, 0.9, diagnosis="nevus", seed=779)
    with sessions() as s:
        cases = site.gather_cases(s, store, version)
    assert cases.counts == {"confirmed": 12, "scored": 11, "rescored": 0, "unscored": 1, "unusable": 1,
                            "used": 10}
    with sessions() as s:
        rescored = site.gather_cases(s, store, version,
                                     rescore=lambda paths: {p: np.eye(9)[4] for p in paths})
    assert rescored.counts["rescored"] == 1 and rescored.counts["used"] == 11


def test_proposal_becomes_a_version_that_promote_and_rollback_use(sessions, settings,
                                                                  store_with_tiny_model) -> None:
    store = store_with_tiny_model
    base = _calibrated_site(sessions, settings, store)
    base_meta = store.metadata(base)
    with sessions() as s:
        cases = site.gather_cases(s, store, base)
    proposal = site.propose(cases, base_meta, site.SitePolicy(n_boot=300))
    assert proposal.passed, proposal.gate["reasons"]
    assert {c["name"] for c in proposal.gate["checks"]} == {"evidence", "auc_non_inferior", "urgent_sensitivity",
                                                           "calibration"}
    assert proposal.thresholds.urgent_melanoma != base_meta.thresholds.urgent_melanoma
    assert proposal.thresholds.min_confidence == base_meta.thresholds.min_confidence
    assert proposal.soon is None  # no keratinocyte lesions confirmed
    added = site.write_version(store, proposal, "melanoma-triage calibrate", settings.home / "calibration")
    meta = store.metadata(added)
    assert "-site-" in added and len(added) <= 64
    assert meta.sha256 == base_meta.sha256 and meta.parent_version == base
    assert meta.thresholds.urgent_melanoma == pytest.approx(proposal.urgent.threshold)
    assert "site calibration of" in meta.notes and meta.metrics["site"]["cases_sha256"] == proposal.cases_sha256
    folder = store.version_dir(added)
    assert json.loads((folder / site.PROPOSAL_FILE).read_text())["base_version"] == base
    assert f"# Model card: {added}" in (folder / "model_card.md").read_text()
    assert not (folder / "reference.json").exists()  # none given: the parent's is replayed
    assert store.current_version() == base  # proposed, not promoted
    admin.promote(store, sessions, added, "test", "site calibration")
    assert store.current_version() == added
    admin.rollback(store, sessions, "test", "back")
    assert store.current_version() == base
    assert not list((settings.home / "calibration").iterdir())  # staging cleaned


def test_predictions_of_a_site_version_count_for_its_base(sessions, settings, store_with_tiny_model) -> None:
    store = store_with_tiny_model
    base = _calibrated_site(sessions, settings, store)
    with sessions() as s:
        proposal = site.propose(site.gather_cases(s, store, base), store.metadata(base), site.SitePolicy(n_boot=200))
    added = site.write_version(store, proposal, "test", settings.home / "calibration")
    assert set(site.equivalent_versions(store, base)) == {base, added}
    sitegen.add_site(sessions, settings.archive_dir, added, proposal.thresholds, 3, 3, seed=5)
    with sessions() as s:
        assert site.gather_cases(s, store, added).counts["used"] == 246


def test_site_version_inherits_the_shift_reference(sessions, settings, store_with_tiny_model) -> None:
    from tests.test_shift_monitor import THRESHOLDS, _records
    from worker.monitor import reference as ref

    store = store_with_tiny_model
    base = _calibrated_site(sessions, settings, store)
    ref.save_reference(store.version_dir(base), ref.build_reference(base, _records(), THRESHOLDS, "g"))
    with sessions() as s:
        proposal = site.propose(site.gather_cases(s, store, base), store.metadata(base), site.SitePolicy(n_boot=200))
    added = site.write_version(store, proposal, "test", settings.home / "calibration")
    reference = load_reference(store, added, shipped=settings.home / "none")
    assert reference.version == base
    assert reference.expected_rates(proposal.thresholds)["urgent"] != reference.expected_rates(THRESHOLDS)["urgent"]


def test_calibrate_command(settings, sessions, store_with_tiny_model) -> None:
    from worker.calibration.cli import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a group, so that `calibrate` is a sub-command
    _calibrated_site(sessions, settings, store_with_tiny_model)
    runner = CliRunner()
    dry = runner.invoke(app, ["calibrate", "--dry-run", "--no-rescore", "--home", str(settings.home)])
    assert dry.exit_code == 0, dry.output
    assert "urgent threshold:" in dry.stdout and "dry run: no version added" in dry.stdout
    real = runner.invoke(app, ["calibrate", "--no-rescore", "--home", str(settings.home), "--json"])
    assert real.exit_code == 0, (real.output, real.exception)
    assert json.loads(real.stdout)["proposed"] is True
    assert real.exit_code == 0, real.output
    added = json.loads(real.stdout)["added_version"]
    assert added in store_with_tiny_model.list_versions()
    own = load_reference(store_with_tiny_model, added, shipped=settings.home / "none")
    assert own.version == added and "site traffic" in own.data["source"]  # the site is its own baseline
    strict = runner.invoke(app, ["calibrate", "--no-rescore", "--min-melanoma", "500", "--home", str(settings.home)])
    assert strict.exit_code == 1 and "not enough confirmed cases" in strict.output


def test_a_miscalibrated_site_fails_the_calibration_gate(sessions, settings, store_with_tiny_model) -> None:
    """Thresholds cannot repair probabilities: the same gate as retraining says no."""
    store = store_with_tiny_model
    base = _site(sessions, settings, store, n_mel=40, n_benign=150)
    with sessions() as s:
        proposal = site.propose(site.gather_cases(s, store, base), store.metadata(base), site.SitePolicy(n_boot=200))
    assert not proposal.passed
    assert any("calibration error" in r for r in proposal.gate["reasons"])
