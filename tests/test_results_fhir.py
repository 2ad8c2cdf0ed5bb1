"""FHIR R4 result bundles, parsed back by the FHIR model library; the outbox, the API hook
and the POST to a FHIR endpoint."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle

from pydantic import ValidationError

from schemas import CLASS_NAMES, ImageMetadata, TriageLevel
from tests.conftest import make_settings
from tests.resultgen import MODEL_VERSION, RecordingHTTPServer, finished_job, insert_done_job
from worker.db.models import Prediction
from worker.results.delivery import deliver_results
from worker.results.fhir import build_bundle, fhir_bundle_for_job, fhir_outbox, write_outbox

#: A predicted class for every triage level, as the pipeline pairs them.
TRIAGE_CASES = [(TriageLevel.URGENT, "melanoma", 0.83), (TriageLevel.SOON, "basal_cell_carcinoma", 0.1),
                (TriageLevel.ROUTINE, "nevus", 0.01), (TriageLevel.INDETERMINATE, "dermatofibroma", 0.4)]


def resources(bundle: Bundle) -> dict[str, list]:
    out: dict[str, list] = {}
    for entry in bundle.entry:
        out.setdefault(entry.resource.get_resource_type(), []).append(entry.resource)
    return out


def test_bundle_parses_and_holds_the_result(tmp_path):
    job = finished_job(tmp_path, "dicom", melanoma=0.83)
    pdf = job.report_path.read_bytes()
    data = build_bundle(job, pdf)
    bundle = Bundle.model_validate(data)  # the FHIR library, not our own checks
    assert bundle.type == "collection"
    found = resources(bundle)
    assert set(found) == {"Device", "Observation", "DiagnosticReport"}

    report = found["DiagnosticReport"][0]
    assert report.status == "preliminary"
    assert report.code.coding[0].code == "446078004"  # dermoscopic photography
    assert "URGENT" in report.conclusion and "not a diagnosis" in report.conclusion
    assert {c.coding[0].code for c in report.conclusionCode} == {"URGENT", "372244006"}
    form = report.presentedForm[0]
    assert form.contentType == "application/pdf" and form.data == pdf  # the library decodes base64
    assert report.subject.identifier.value == "TEST-0001"
    assert report.basedOn[0].identifier.value == "ACC0001"
    assert report.imagingStudy[0].identifier.value == "urn:oid:1.2.826.0.1.3680043.8.498.1"

    urls = {e.fullUrl for e in bundle.entry}
    assert {r.reference for r in report.result} <= urls
    observations = {o.code.coding[0].code: o for o in found["Observation"]}
    assert float(observations["P-MELANOMA"].valueQuantity.value) == pytest.approx(0.83)
    assert observations["P-MELANOMA"].valueQuantity.code == "1"
    klass = observations["CLASS"].valueCodeableConcept.coding[0]
    assert (klass.system, klass.code) == ("http://snomed.info/sct", "372244006")
    assert observations["TRIAGE"].valueCodeableConcept.coding[0].code == "URGENT"
    assert all(o.status == "preliminary" and o.device.reference in urls for o in observations.values())

    device = found["Device"][0]
    assert device.version[0].value == MODEL_VERSION
    assert "Doe" not in json.dumps(data)  # patient referenced by identifier, never by name


def test_transaction_bundle_uses_conditional_creates(tmp_path):
    job = finished_job(tmp_path, "jpeg", triage=TriageLevel.ROUTINE, melanoma=0.02,
                       predicted_class="seborrheic_keratosis")
    data = build_bundle(job, job.report_path.read_bytes(), "urn:oid:2.16.840.1.113883.2.4.6.3",
                        bundle_type="transaction")
    bundle = Bundle.model_validate(data)
    assert bundle.type == "transaction"
    for entry in bundle.entry:
        assert entry.request.method == "POST" and entry.request.ifNoneExist.startswith("identifier=")
    report = resources(bundle)["DiagnosticReport"][0]
    assert report.subject.identifier.system == "urn:oid:2.16.840.1.113883.2.4.6.3"
    klass = [o for o in resources(bundle)["Observation"] if o.code.coding[0].code == "CLASS"][0]
    coding = klass.valueCodeableConcept.coding[0]
    assert (coding.system, coding.code) == ("urn:melanoma-triage:codes", "SK")  # no SNOMED code


def test_same_job_same_bundle(tmp_path):
    job = finished_job(tmp_path, "dicom")
    pdf = job.report_path.read_bytes()
    assert build_bundle(job, pdf) == build_bundle(job, pdf)


def test_fhir_bundle_for_job(settings, sessions):
    job_id = insert_done_job(sessions, settings, "dicom")
    bundle = fhir_bundle_for_job(sessions, settings, job_id)
    assert Bundle.model_validate(bundle).entry[-1].resource.identifier[0].value == job_id
    assert fhir_bundle_for_job(sessions, settings, "no-such-job") is None


def test_outbox_and_post_to_fhir_endpoint(tmp_path, sessions, migrated_settings):
    with RecordingHTTPServer(statuses=(503, 200)) as server:
        settings = make_settings(migrated_settings.home, fhir_endpoint=server.url,
                                 fhir_bearer_token="s3cret", delivery_backoff_s=0.01)
        job_id = insert_done_job(sessions, settings, "dicom", triage=TriageLevel.ROUTINE)
        outcomes = deliver_results(settings, sessions, job_id)
        assert [(o.kind, o.state, o.attempts) for o in outcomes] == [("fhir", "sent", 2)]
        assert len(server.requests) == 2  # one 503, then stored
        headers, body = server.requests[-1]
        assert headers["content-type"] == "application/fhir+json"
        assert headers["authorization"] == "Bearer s3cret"
        assert Bundle.model_validate_json(body).type == "transaction"
        deliver_results(settings, sessions, job_id)  # idempotent: nothing posted again
        assert len(server.requests) == 2
    outbox = fhir_outbox(settings) / f"{job_id}.json"
    assert Bundle.model_validate_json(outbox.read_bytes()).type == "collection"


@pytest.mark.parametrize("bundle_type", ["collection", "transaction"])
@pytest.mark.parametrize("with_patient", [True, False], ids=["patient", "no-patient"])
@pytest.mark.parametrize("fmt", ["dicom", "jpeg", "png"])
@pytest.mark.parametrize("triage,klass,melanoma", TRIAGE_CASES, ids=[c[0].value for c in TRIAGE_CASES])
def test_every_kind_of_bundle_is_valid_fhir(tmp_path, triage, klass, melanoma, fmt, with_patient,
                                            bundle_type):
    """Every shape the builder makes, parsed by the FHIR library from the outbox bytes: the
    library checks at run time too, this shows the builder makes no bundle that it refuses."""
    metadata = None if with_patient else ImageMetadata()  # None: the format's default, with ids
    job = finished_job(tmp_path, fmt, triage=triage, melanoma=melanoma, predicted_class=klass,
                       metadata=metadata)
    system = "urn:oid:2.16.840.1.113883.2.4.6.3" if bundle_type == "transaction" else ""
    data = build_bundle(job, job.report_path.read_bytes(), system, bundle_type)
    settings = make_settings(tmp_path / "home")
    raw = write_outbox(settings, job, data).read_bytes()
    assert b"\n" not in raw and b", " not in raw[:200]  # compact JSON
    assert json.loads(raw) == data
    bundle = Bundle.model_validate_json(raw)
    assert bundle.type == bundle_type and bundle.timestamp is not None
    found = resources(bundle)
    report = found["DiagnosticReport"][0]
    assert report.conclusionCode[0].coding[0].code == triage.value.upper()
    assert (report.subject is not None) == with_patient
    assert all((o.subject is not None) == with_patient for o in found["Observation"])
    assert (report.imagingStudy is not None) == (with_patient and fmt == "dicom")
    assert data["timestamp"].endswith("Z")


def test_every_predicted_class_makes_a_valid_bundle(tmp_path):
    for klass in CLASS_NAMES:
        job = finished_job(tmp_path / klass, "jpeg", triage=TriageLevel.ROUTINE, melanoma=0.01,
                           predicted_class=klass)
        Bundle.model_validate(build_bundle(job, job.report_path.read_bytes(), bundle_type="transaction"))


def test_invalid_content_is_refused_before_it_leaves(tmp_path):
    job = finished_job(tmp_path, "jpeg", melanoma=float("nan"))
    with pytest.raises(ValidationError):
        build_bundle(job, job.report_path.read_bytes())


def test_an_invalid_bundle_is_never_posted_nor_written(sessions, migrated_settings):
    with RecordingHTTPServer() as server:
        settings = make_settings(migrated_settings.home, fhir_endpoint=server.url, delivery_attempts=2,
                                 delivery_backoff_s=0.01)
        job_id = insert_done_job(sessions, settings, "jpeg", triage=TriageLevel.ROUTINE)
        with sessions.begin() as s:  # a probability no FHIR decimal can hold
            s.query(Prediction).filter_by(job_id=job_id).update({"p_melanoma": float("inf")})
        outcome, = deliver_results(settings, sessions, job_id, sleep=lambda _: None)
        assert (outcome.kind, outcome.state, outcome.attempts) == ("fhir", "dead", 2)
        assert server.requests == []
    assert not (fhir_outbox(settings) / f"{job_id}.json").exists()
