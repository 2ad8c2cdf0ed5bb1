"""Ground truth: labels by job, image or hash; CSV import; precedence; per-version triage metrics."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from schemas import CLASS_NAMES, TruthSource
from worker.cli.main import app as cli_app
from worker.db.engine import make_engine, make_session_factory
from worker.db.models import GroundTruth, Image, Job, Prediction
from worker.retrain import truth


@pytest.fixture
def sessions(migrated_settings):
    engine = make_engine(migrated_settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _case(sessions, n: int, version: str, level: str, accession: str | None = None) -> tuple[str, str, str]:
    """An image with a finished job and one prediction; (job id, image id, sha256)."""
    sha = f"{n:064x}"
    with sessions.begin() as s:
        image = Image(sha256=sha, archive_path=f"/archive/{sha}", source_door="api",
                      accession_number=accession)
        s.add(image)
        s.flush()
        job = Job(image_id=image.id, state="done")
        s.add(job)
        s.flush()
        probs = {f"p_{c}": 1 / len(CLASS_NAMES) for c in CLASS_NAMES}
        s.add(Prediction(job_id=job.id, model_version=version, predicted_class="nevus",
                         triage_level=level, **probs))
        return job.id, image.id, sha


def test_label_by_job_image_or_hash_and_idempotent(sessions):
    job_id, image_id, sha = _case(sessions, 1, "v1", "urgent")
    with sessions.begin() as s:
        assert truth.add_label(s, job_id, "Melanoma", "histopathology", "lab") == (image_id, True)
        assert truth.add_label(s, image_id, "melanoma", "histopathology", "lab") == (image_id, False)
        assert truth.add_label(s, sha.upper(), "nevus", "clinical", "gp") == (image_id, True)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(GroundTruth)) == 2
        # histopathology wins over a later clinical label
        assert truth.effective_truth(s) == {image_id: ("melanoma", "histopathology")}


def test_sources_are_the_enum_in_order_of_authority():
    assert truth.SOURCES == (TruthSource.HISTOPATHOLOGY, TruthSource.CONSENSUS, TruthSource.CLINICAL)
    assert truth.check_source(" Consensus ") is TruthSource.CONSENSUS
    assert truth.check_source(TruthSource.CLINICAL) is TruthSource.CLINICAL


@pytest.mark.parametrize("ref,dx,source,match", [
    ("0" * 32, "melanoma", "clinical", "no job or image"),
    (None, "mole", "clinical", "unknown diagnosis"),
    (None, "nevus", "hearsay", "unknown source"),
])
def test_bad_labels_are_refused(sessions, ref, dx, source, match):
    job_id, _, _ = _case(sessions, 2, "v1", "routine")
    with sessions.begin() as s, pytest.raises(truth.LabelError, match=match):
        truth.add_label(s, ref or job_id, dx, source, "x")


def test_csv_import_stores_good_rows_and_reports_bad_lines(sessions, tmp_path):
    a, _, _ = _case(sessions, 3, "v1", "urgent")
    b, _, _ = _case(sessions, 4, "v1", "routine")
    csv_path = tmp_path / "pathology.csv"
    csv_path.write_text("Job_ID,diagnosis,source\n"
                        f"{a},melanoma,histopathology\n"
                        f"{b},nevus,histopathology\n"
                        f"{'f' * 32},nevus,histopathology\n"
                        f"{b},wart,histopathology\n")
    report = truth.import_csv(sessions, csv_path, "importer")
    assert (report.added, report.unchanged) == (2, 0)
    assert [line for line, _ in report.errors] == [4, 5]
    again = truth.import_csv(sessions, csv_path, "importer")
    assert (again.added, again.unchanged) == (0, 2)


def test_csv_import_by_accession_with_default_source(sessions, tmp_path):
    _, image_id, _ = _case(sessions, 5, "v1", "soon", accession="ACC-1")
    csv_path = tmp_path / "batch.csv"
    csv_path.write_text("accession_number,diagnosis\nACC-1,basal_cell_carcinoma\n")
    with pytest.raises(truth.LabelError, match="source"):
        truth.import_csv(sessions, csv_path, "x")
    assert truth.import_csv(sessions, csv_path, "x", default_source="consensus").added == 1
    with sessions() as s:
        assert truth.effective_truth(s)[image_id] == ("basal_cell_carcinoma", "consensus")


def test_triage_metrics_per_version(sessions):
    rows = [  # (version, triage level, truth)
        ("v1", "urgent", "melanoma"), ("v1", "urgent", "nevus"), ("v1", "routine", "melanoma"),
        ("v1", "routine", "nevus"), ("v1", "soon", "basal_cell_carcinoma"),
        ("v2", "urgent", "melanoma"), ("v2", "routine", "nevus"),
    ]
    for n, (version, level, dx) in enumerate(rows, start=10):
        job_id, _, _ = _case(sessions, n, version, level)
        with sessions.begin() as s:
            truth.add_label(s, job_id, dx, "histopathology", "lab")
    _case(sessions, 99, "v1", "urgent")  # no truth yet: not counted
    with sessions() as s:
        m = truth.triage_metrics(s)
    assert m["v1"]["n"] == 5 and m["v1"]["n_melanoma"] == 2
    assert m["v1"]["urgent"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 2, "sensitivity": 0.5,
                                 "specificity": 0.6667, "ppv": 0.5}
    assert m["v1"]["soon"]["sensitivity"] == 1.0 and m["v1"]["soon"]["ppv"] == 1.0
    assert m["v1"]["referral"]["sensitivity"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["v2"]["urgent"]["sensitivity"] == 1.0 and m["v2"]["urgent"]["specificity"] == 1.0


def test_label_and_metrics_cli(sessions, migrated_settings):
    job_id, _, _ = _case(sessions, 7, "v9", "urgent")
    runner = CliRunner()
    home = ["--home", str(migrated_settings.home)]
    out = runner.invoke(cli_app, ["label", job_id, "--diagnosis", "melanoma",
                                  "--source", "histopathology", "--by", "lab", *home])
    assert out.exit_code == 0 and "recorded" in out.output, out.output
    out = runner.invoke(cli_app, ["label", job_id, "--diagnosis", "melanoma", "--source", "gossip", *home])
    assert out.exit_code == 2 and "gossip" in out.output  # not a TruthSource: a usage error
    out = runner.invoke(cli_app, ["metrics", "--json", *home])
    assert out.exit_code == 0
    assert json.loads(out.output)["v9"]["urgent"]["sensitivity"] == 1.0
    out = runner.invoke(cli_app, ["metrics", *home])
    assert "model v9: 1 confirmed cases" in out.output
