"""Site calibration (issue 12, item 4; issue 23) on generated sites: thresholds, evidence, the
recalibration and its gate, the operating-point table, the version and what serves it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tests import sitegen
from worker.calibration import recalibrate as rc
from worker.calibration import site
from worker.calibration import thresholds as th
from worker.calibration.proposal_text import format_proposal, table_lines
from worker.classify.recalibration import RECALIBRATION_FILE, Recalibration, load_recalibration
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
    assert op.oob_sensitivity.low <= op.expected_sensitivity <= op.oob_sensitivity.high


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


def _miscalibrated_site(sessions, settings, store, n=260, seed=3):
    """A site where the base's melanoma probabilities are far too high (``sitegen``)."""
    version = store.current_version()
    n_mel = sitegen.add_miscalibrated_site(sessions, settings.archive_dir, version,
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
                            "used": 10, "traffic": 11}
    assert cases.image_sha256 == sorted(cases.image_sha256)  # content order: reproducible bootstraps
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
    # Honest probabilities: no map beats them out of bag, so the base's are kept.
    assert proposal.recalibration is None and proposal.recalibration_fit["method"] == "none"
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
    assert not (folder / RECALIBRATION_FILE).exists()
    from worker.classify.inference import Classifier

    note = Classifier.from_store(store, added).calibration_note
    assert note == f"{added}, thresholds calibrated on 240 confirmed cases of this site " \
                   f"({proposal.created_at[:10]}); probabilities as trained"
    assert store.current_version() == base  # proposed, not promoted
    admin.promote(store, sessions, added, "test", "site calibration")
    assert store.current_version() == added
    admin.rollback(store, sessions, "test", "back")
    assert store.current_version() == base
    assert not list((settings.home / "calibration").iterdir())  # staging cleaned


def test_predictions_of_a_threshold_only_site_version_count_for_its_base(sessions, settings,
                                                                         store_with_tiny_model) -> None:
    store = store_with_tiny_model
    base = _calibrated_site(sessions, settings, store)
    with sessions() as s:
        proposal = site.propose(site.gather_cases(s, store, base), store.metadata(base),
                                site.SitePolicy(n_boot=200, recalibrate=False))
    added = site.write_version(store, proposal, "test", settings.home / "calibration")
    assert not (store.version_dir(added) / RECALIBRATION_FILE).exists()
    assert set(site.equivalent_versions(store, base)) == {base, added} == set(site.raw_versions(store, base))
    sitegen.add_site(sessions, settings.archive_dir, added, proposal.thresholds, 3, 3, seed=5)
    with sessions() as s:
        assert site.gather_cases(s, store, added).counts["used"] == 246


def test_predictions_of_a_recalibrated_version_are_not_the_bases(sessions, settings, store_with_tiny_model) -> None:
    """A recalibrated version prints other probabilities: a later calibration is fitted on the
    weights' own ones, so the site version's predictions are rescored, not reused."""
    store = store_with_tiny_model
    base = _miscalibrated_site(sessions, settings, store)
    with sessions() as s:
        proposal = site.propose(site.gather_cases(s, store, base), store.metadata(base), site.SitePolicy(n_boot=200))
    added = site.write_version(store, proposal, "test", settings.home / "calibration")
    assert site.equivalent_versions(store, added) == [added] and site.raw_versions(store, added) == [base]
    sitegen.add_site(sessions, settings.archive_dir, added, proposal.thresholds, 3, 3, seed=5)
    with sessions() as s:
        counts = site.gather_cases(s, store, added).counts
    assert counts["used"] == 260 and counts["unscored"] == 6


def test_site_version_inherits_the_shift_reference(sessions, settings, store_with_tiny_model) -> None:
    from tests.test_shift_monitor import THRESHOLDS, _records
    from worker.monitor import reference as ref

    store = store_with_tiny_model
    base = _miscalibrated_site(sessions, settings, store)
    ref.save_reference(store.version_dir(base), ref.build_reference(base, _records(), THRESHOLDS, "g"))
    with sessions() as s:
        cases = site.gather_cases(s, store, base)
    plain = site.propose(cases, store.metadata(base), site.SitePolicy(n_boot=200, recalibrate=False))
    added = site.write_version(store, plain, "test", settings.home / "calibration")
    reference = load_reference(store, added, shipped=settings.home / "none")
    assert reference.version == base  # same probabilities: the parent's, replayed
    assert reference.expected_rates(plain.thresholds)["urgent"] != reference.expected_rates(THRESHOLDS)["urgent"]
    proposal = site.propose(cases, store.metadata(base), site.SitePolicy(n_boot=200))
    recalibrated = site.write_version(store, proposal, "test", settings.home / "calibration")
    mapped = load_reference(store, recalibrated, shipped=settings.home / "none")
    assert mapped.version == recalibrated  # the parent's, mapped into the site version's probabilities
    recal = load_recalibration(store.version_dir(recalibrated))
    parent = np.array(ref.load_reference(store, base).data["scores"]["melanoma"])
    assert np.allclose(mapped.data["scores"]["melanoma"], recal.melanoma(parent), atol=1e-6)


def _app() -> typer.Typer:
    from worker.calibration.cli import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a group, so that `calibrate` is a sub-command
    return app


def test_calibrate_command(settings, sessions, store_with_tiny_model) -> None:
    app, runner = _app(), CliRunner()
    _miscalibrated_site(sessions, settings, store_with_tiny_model)
    home = ["--no-rescore", "--home", str(settings.home)]
    dry = runner.invoke(app, ["calibrate", "--dry-run", *home])
    assert dry.exit_code == 0, dry.output
    assert "urgent threshold:" in dry.stdout and dry.stdout.strip().splitlines()[-1] == "dry run: no version added"
    for wanted in ("0.90", "0.93", "0.95 ", "0.97"):
        assert f"\n  {wanted}" in dry.stdout, dry.stdout  # a row of the operating-point table
    assert "share flagged urgent" in dry.stdout and "<- chosen" in dry.stdout
    before = store_with_tiny_model.list_versions()
    unsigned = runner.invoke(app, ["calibrate", *home])
    assert unsigned.exit_code == 2 and "--by" in unsigned.output
    assert store_with_tiny_model.list_versions() == before
    real = runner.invoke(app, ["calibrate", *home, "--sensitivity", "0.93", "--by", "Dr A. Example",
                               "--reason", "governance board 2026-12: fewer benign excisions"])
    assert real.exit_code == 0, (real.output, real.exception)
    added = real.stdout.strip().splitlines()[-1]
    assert added in store_with_tiny_model.list_versions() and "-site-" in added
    card = (store_with_tiny_model.version_dir(added) / "model_card.md").read_text()
    assert "sensitivity 0.93 on new cases, chosen by **Dr A. Example**" in card
    assert "fewer benign excisions" in card
    assert [line for line in card.splitlines() if line.endswith("<- chosen |")][0].startswith("| 0.93 | ")
    own = load_reference(store_with_tiny_model, added, shipped=settings.home / "none")
    assert own.version == added and "site traffic" in own.data["source"]  # the site is its own baseline
    assert "mapped through the site recalibration" in own.data["source"]
    as_json = runner.invoke(app, ["calibrate", *home, "--json", "--by", "x", "--reason", "y"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["proposed"] is True
    strict = runner.invoke(app, ["calibrate", *home, "--min-melanoma", "500", "--by", "x", "--reason", "y"])
    assert strict.exit_code == 1 and "not enough confirmed cases" in strict.output


def test_a_miscalibrated_base_passes_after_recalibration_and_not_with_thresholds_alone(
        sessions, settings, store_with_tiny_model) -> None:
    """The issue's site: the base's percentages are far too high there. Thresholds alone
    cannot repair that (the gate judges the probabilities); the recalibrated version passes."""
    store = store_with_tiny_model
    base = _miscalibrated_site(sessions, settings, store)
    with sessions() as s:
        cases = site.gather_cases(s, store, base)
    threshold_only = site.propose(cases, store.metadata(base), site.SitePolicy(n_boot=300, recalibrate=False))
    assert not threshold_only.passed
    assert [c["name"] for c in threshold_only.gate["checks"] if not c["passed"]] == ["calibration"]
    recalibrated = site.propose(cases, store.metadata(base), site.SitePolicy(n_boot=300))
    assert recalibrated.passed, recalibrated.gate["reasons"]
    base_ece, site_ece = recalibrated.gate["champion"]["ece"], recalibrated.gate["challenger"]["ece"]
    assert base_ece > 0.1 >= site_ece and site_ece < base_ece / 2
    r = recalibrated.recalibration
    assert r["method"] == "platt" and r["intercept"] < -1  # the inflation taken back out
    # Same ranking: the recalibrated threshold flags the same cases as the threshold-only one.
    assert recalibrated.urgent.expected_sensitivity == pytest.approx(threshold_only.urgent.expected_sensitivity)
    assert recalibrated.urgent.threshold < threshold_only.urgent.threshold


def test_the_operating_point_table(sessions, settings, store_with_tiny_model) -> None:
    store = store_with_tiny_model
    base = _calibrated_site(sessions, settings, store)
    # Traffic nobody confirmed (mostly benign-looking): counted in the share of all lesions.
    sitegen.add_site(sessions, settings.archive_dir, base, store.metadata(base).thresholds, 5, 95, seed=9,
                     labelled=False)
    with sessions() as s:
        cases = site.gather_cases(s, store, base)
    assert cases.counts["traffic"] == 340 and cases.traffic.size == 340
    proposal = site.propose(cases, store.metadata(base), site.SitePolicy(n_boot=300, required_sensitivity=0.92))
    rows = proposal.table
    assert [r.required_sensitivity for r in rows] == [0.90, 0.92, 0.93, 0.95, 0.97]  # the asked-for one added
    assert proposal.urgent is rows[1] and proposal.thresholds.urgent_melanoma == rows[1].threshold
    for lo, hi in zip(rows, rows[1:]):  # more sensitivity costs specificity and flags more lesions
        assert hi.threshold <= lo.threshold and hi.expected_sensitivity >= lo.expected_sensitivity
        assert hi.expected_specificity <= lo.expected_specificity and hi.oob_flagged.value >= lo.oob_flagged.value
    for r in rows:
        assert r.reached and r.expected_sensitivity >= r.required_sensitivity
        for iv in (r.oob_sensitivity, r.oob_specificity, r.oob_flagged):
            assert 0 <= iv.low <= iv.value <= iv.high <= 1 and iv.high - iv.low > 0.01
        # The share flagged is what the sensitivity and specificity give on this case mix.
        y = proposal.counts["melanoma"] / proposal.counts["used"]
        expected = y * r.expected_sensitivity + (1 - y) * (1 - r.expected_specificity)
        assert r.oob_flagged.value == pytest.approx(expected, abs=0.02)
        assert r.traffic_flagged.value == pytest.approx(float((cases.traffic >= r.threshold).mean()))
        assert r.traffic_flagged.value < r.oob_flagged.value  # the unconfirmed traffic is mostly benign
    lines = table_lines(rows, 0.92)
    assert lines[0].split() == ["sensitivity", "wanted", "threshold", "sensitivity", "specificity", "share",
                                "flagged", "urgent", "share", "of", "recent", "traffic", "flagged"]
    assert lines[2].endswith("<- chosen") and lines[2].startswith("0.92")
    text = "\n".join(format_proposal(proposal))
    assert text.index("0.97") < text.index("urgent threshold:")  # the trade-off before the choice


def test_recalibration_keeps_the_other_classes_coherent() -> None:
    r = Recalibration("platt", slope=0.8, intercept=-1.5, n_cases=300, n_melanoma=60, fitted_on="2026-12-05")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(9) * 0.5, 50)
    out = r.apply(probs)
    mel = site.MELANOMA_INDEX
    assert np.allclose(out.sum(axis=1), 1) and (out >= 0).all()
    others = np.delete(np.arange(9), mel)
    # The other classes keep their ratios (and so their order and the class call among them).
    assert np.allclose(out[:, others] / out[:, others].sum(1, keepdims=True),
                       probs[:, others] / probs[:, others].sum(1, keepdims=True))
    assert (np.diff(out[np.argsort(probs[:, mel]), mel]) >= 0).all()  # monotone
    assert np.allclose(r.apply(probs[0]), out[0])  # one row as the workers call it
    iso = Recalibration("isotonic", knots_logit=[-3.0, 0.0, 2.0], knots_p=[0.01, 0.2, 0.9])
    assert iso.melanoma(np.array([1e-9, 0.5, 1 - 1e-9])).tolist() == [0.01, 0.2, 0.9]
    with pytest.raises(ValueError):
        Recalibration("platt", slope=-1.0)
    assert r.note("v-site") == "v-site, calibrated on 300 confirmed cases of this site (2026-12-05)"


def test_recalibration_fit_is_judged_out_of_bag() -> None:
    from worker.training.metrics import expected_calibration_error

    rng = np.random.default_rng(1)
    n = 800
    z = rng.normal(-2.0, 1.5, n)
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    shown = 1 / (1 + np.exp(-(1.5 * z + 2.5)))
    probs = np.zeros((n, 9))
    probs[:, site.MELANOMA_INDEX], probs[:, 4] = shown, 1 - shown
    fit = rc.recalibrate(probs, y, n_boot=200)
    assert fit.recalibration.slope == pytest.approx(1 / 1.5, abs=0.15)
    assert fit.recalibration.intercept == pytest.approx(-2.5 / 1.5, abs=0.35)
    assert set(fit.oob_log_loss) == {"platt", "isotonic"}  # 143 melanomas, 657 others: isotonic tried too
    assert fit.recalibration.method == "platt"  # the truth is a Platt map: isotonic does worse out of bag
    labels = np.where(y, site.MELANOMA_INDEX, 4)
    in_sample = expected_calibration_error(fit.recalibration.apply(probs), labels)
    oob = expected_calibration_error(fit.oob_probs, labels)
    assert oob < expected_calibration_error(probs, labels) / 2
    assert fit.oob_log_loss[fit.recalibration.method] >= rc.log_loss(
        fit.recalibration.apply(probs)[:, site.MELANOMA_INDEX], y) - 1e-9  # out of bag is not flattered
    assert in_sample < 0.1
    small = rc.recalibrate(probs[:200], y[:200], n_boot=50)
    assert set(small.oob_log_loss) == {"platt"}


def test_the_workers_serve_the_site_probabilities(sessions, settings, store_with_tiny_model, tmp_path) -> None:
    """The LiteRT serving path applies the version's recalibration, the triage uses it, and
    the report says which calibration it used."""
    from tests.test_report import make_content, page_count, pdf_text, render
    from worker.classify.inference import Classifier

    store = store_with_tiny_model
    base = _miscalibrated_site(sessions, settings, store)
    with sessions() as s:
        proposal = site.propose(site.gather_cases(s, store, base), store.metadata(base), site.SitePolicy(n_boot=200),
                                chosen_by="Dr A. Example", reason="test")
    added = site.write_version(store, proposal, "test", settings.home / "calibration")
    recal = load_recalibration(store.version_dir(added))
    assert recal is not None and recal.n_cases == proposal.counts["used"]
    rgb = np.asarray(sitegen.site_png(seed=1) and np.full((64, 64, 3), 120, np.uint8))
    served_base, served_site = Classifier.from_store(store, base), Classifier.from_store(store, added)
    raw = Classifier.from_store(store, added, site_recalibration=False).probabilities(rgb)
    assert raw == served_base.probabilities(rgb)
    p_site = served_site.probabilities(rgb)
    expected = recal.apply(np.array([raw[c] for c in site.CLASS_NAMES]))
    assert [p_site[c] for c in site.CLASS_NAMES] == pytest.approx(expected.tolist())
    assert p_site[site.MELANOMA] != pytest.approx(raw[site.MELANOMA])
    result = served_site.predict(rgb)
    assert result.melanoma_probability == p_site[site.MELANOMA]
    assert (result.triage.value == "urgent") == (p_site[site.MELANOMA] >= proposal.thresholds.urgent_melanoma)
    note = served_site.calibration_note
    assert note.startswith(added) and f"calibrated on {proposal.counts['used']} confirmed cases of this site (" in note
    assert "as trained" in served_base.calibration_note
    pdf = render(tmp_path, make_content(model_version=added, calibration_note=note))
    assert f"Calibration: {note}" in pdf_text(pdf) and page_count(pdf) == 1


def test_site_reference_mapping_follows_the_recalibration() -> None:
    from tests.test_shift_monitor import THRESHOLDS, _records
    from worker.calibration.site_reference import map_reference
    from worker.monitor import reference as ref

    doc = ref.build_reference("base", _records(), THRESHOLDS, "validation")
    r = Recalibration("platt", slope=1.0, intercept=-1.0)
    mapped = map_reference(doc, r, THRESHOLDS)
    assert np.allclose(mapped["scores"]["melanoma"], r.melanoma(np.array(doc["scores"]["melanoma"])), atol=1e-6)
    assert mapped["rates"]["urgent"] <= doc["rates"]["urgent"]  # lower probabilities, same threshold
    assert mapped["distributions"]["melanoma_probability"]["mean"] < doc["distributions"]["melanoma_probability"]["mean"]
