"""FHIR R4 for the EHR: one Bundle per result, validated by ``fhir.resources`` before it leaves.

Content: a DiagnosticReport (dermoscopy, status preliminary, conclusion and coded triage,
the PDF as presentedForm), three Observations (melanoma probability, predicted class,
triage level) and a Device naming the model and its version.

Decisions:
* ``fhir.resources`` 7+ ships R5 at the top level and R4B (4.3) as a subpackage; no pure
  R4 (4.0.1) models are maintained. Every element we write has the same name, type and
  cardinality in R4 and R4B, so a bundle that validates as R4B is valid R4.
* The patient is referenced by identifier (``TRIAGE_FHIR_PATIENT_ID_SYSTEM`` + patient id),
  never by name: the EHR already knows its patients. The study is referenced by its
  Study Instance UID, the order by its accession number.
* Sent as a ``transaction`` whose entries are conditional creates (``ifNoneExist`` on our
  identifiers), so a retried POST creates nothing twice. The outbox and the HTTP API get the
  same content as a ``collection``.
* Every bundle is parsed by the FHIR model library before it is returned, so an invalid one
  is never written or POSTed; what leaves is our dict itself (the one that was validated),
  not the library's re-serialisation, which cost twice the validation (timestamps are
  written in UTC with ``Z`` as the library would). The outbox is compact JSON.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from worker.results.codes import (
    CLASS_CONCEPTS,
    DECISION_SUPPORT_STATEMENT,
    DERMOSCOPIC_PHOTOGRAPHY,
    MELANOMA_PROBABILITY,
    PREDICTED_CLASS,
    TRIAGE_CONCEPTS,
    TRIAGE_LEVEL,
    UCUM_FHIR,
)
from worker.results.dicom_objects import MANUFACTURER, MODEL_NAME, software_version
from worker.results.errors import DeliveryError, raise_for_http_status
from worker.results.finished_job import FinishedJob, load_finished_job
from worker.settings import Settings
from worker.storage.blobs import db_location, key_of, put_blob

#: Our identifier systems (URNs: we own no web address for them).
JOB_SYSTEM = "urn:melanoma-triage:job"
RESULT_SYSTEM = "urn:melanoma-triage:result"
MODEL_SYSTEM = "urn:melanoma-triage:model-version"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
_NAMESPACE = uuid.UUID("6f2b3c1e-7a52-4f5e-9d0c-3c1a8f6e2b71")


def fhir_outbox(settings: Settings) -> Path:
    return settings.home / "outbox" / "fhir"


@functools.cache
def _software_version() -> str:
    """Read from package metadata once per process (it costs ~0.3 ms a call)."""
    return software_version()


def _instant(ts: datetime) -> str:
    """A FHIR instant/dateTime in UTC with ``Z`` (callers pass aware datetimes)."""
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _entry(resource: dict, key: str, identifier: dict, transaction: bool) -> dict:
    resource["id"] = _uuid(key)
    entry = {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}
    if transaction:
        entry["request"] = {"method": "POST", "url": resource["resourceType"],
                            "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}"}
    return entry


def _subject(job: FinishedJob, id_system: str) -> dict | None:
    if not job.metadata.patient_id:
        return None
    identifier = {"value": job.metadata.patient_id}
    if id_system:
        identifier["system"] = id_system
    return {"identifier": identifier}


def _observation(job: FinishedJob, key: str, concept, value: dict, subject: dict | None,
                 device_url: str) -> tuple[dict, dict]:
    identifier = {"system": RESULT_SYSTEM, "value": f"{job.job_id}/{key}"}
    resource = {
        "resourceType": "Observation",
        "identifier": [identifier],
        "status": "preliminary",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging",
                                  "display": "Imaging"}]}],
        "code": {"coding": [concept.fhir()], "text": concept.meaning},
        "effectiveDateTime": _instant(job.finished_at),
        "issued": _instant(job.finished_at),
        "device": {"reference": device_url, "display": MODEL_NAME},
        "note": [{"text": DECISION_SUPPORT_STATEMENT}],
        **value,
    }
    if subject:
        resource["subject"] = subject
    return resource, identifier


def build_bundle(job: FinishedJob, pdf: bytes, patient_id_system: str = "",
                 bundle_type: str = "collection") -> dict:
    """The result as a FHIR Bundle (a JSON-ready dict), validated with fhir.resources R4B."""
    transaction = bundle_type == "transaction"
    subject = _subject(job, patient_id_system)

    device_id = {"system": MODEL_SYSTEM, "value": job.model_version}
    device = {
        "resourceType": "Device",
        "identifier": [device_id],
        "status": "active",
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": MODEL_NAME, "type": "model-name"}],
        "type": {"text": "Dermoscopy triage software (decision support)"},
        "version": [{"type": {"text": "model"}, "value": job.model_version},
                    {"type": {"text": "software"}, "value": _software_version()}],
    }
    entries = [_entry(device, f"device/{job.model_version}", device_id, transaction)]
    device_url = entries[0]["fullUrl"]

    triage = TRIAGE_CONCEPTS[job.triage]
    finding = CLASS_CONCEPTS[job.predicted_class]
    observations = [
        ("p-melanoma", MELANOMA_PROBABILITY,
         {"valueQuantity": {"value": round(job.melanoma_probability, 6), "unit": "probability",
                            "system": UCUM_FHIR, "code": "1"}}),
        ("class", PREDICTED_CLASS,
         {"valueCodeableConcept": {"coding": [finding.fhir()], "text": finding.meaning}}),
        ("triage", TRIAGE_LEVEL,
         {"valueCodeableConcept": {"coding": [triage.fhir()], "text": triage.meaning}}),
    ]
    for key, concept, value in observations:
        resource, identifier = _observation(job, key, concept, value, subject, device_url)
        entries.append(_entry(resource, f"{job.job_id}/{key}", identifier, transaction))

    report_id = {"system": JOB_SYSTEM, "value": job.job_id}
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [report_id],
        "status": "preliminary",
        "category": [{"text": "Dermoscopy"}],
        "code": {"coding": [DERMOSCOPIC_PHOTOGRAPHY.fhir()],
                 "text": "Dermoscopy AI triage report (decision support)"},
        "effectiveDateTime": _instant(job.received_at),
        "issued": _instant(job.finished_at),
        "result": [{"reference": e["fullUrl"]} for e in entries[1:]],
        "conclusion": f"{job.triage.wording}. {DECISION_SUPPORT_STATEMENT}",
        "conclusionCode": [{"coding": [triage.fhir()], "text": triage.meaning},
                           {"coding": [finding.fhir()], "text": finding.meaning}],
        "presentedForm": [{
            "contentType": "application/pdf",
            "data": base64.b64encode(pdf).decode("ascii"),
            "size": len(pdf),
            "hash": base64.b64encode(hashlib.sha1(pdf).digest()).decode("ascii"),
            "title": "Dermoscopy triage report",
            "creation": _instant(job.finished_at),
        }],
    }
    if subject:
        report["subject"] = subject
    if job.metadata.accession_number:
        report["basedOn"] = [{"identifier": {
            "type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "ACSN"}]},
            "value": job.metadata.accession_number}}]
    if job.metadata.study_instance_uid:
        report["imagingStudy"] = [{"identifier": {
            "system": "urn:dicom:uid", "value": f"urn:oid:{job.metadata.study_instance_uid}"}}]
    entries.append(_entry(report, f"{job.job_id}/report", report_id, transaction))

    bundle = {
        "resourceType": "Bundle",
        "id": _uuid(job.job_id, "bundle", bundle_type),
        "identifier": {"system": JOB_SYSTEM, "value": f"{job.job_id}/bundle"},
        "type": bundle_type,
        "timestamp": _instant(job.finished_at),
        "entry": entries,
    }
    return validate_bundle(bundle)


def validate_bundle(bundle: dict) -> dict:
    """Parse with the FHIR model library (raises on any invalid element, NaN included) and
    return the same dict: what was validated is what is written and sent."""
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    return bundle


def bundle_json(bundle: dict) -> bytes:
    """Compact JSON, as the outbox holds it and the endpoint receives it (never NaN)."""
    return json.dumps(bundle, separators=(",", ":"), allow_nan=False).encode("utf-8")


def fhir_bundle_for_job(sessions: sessionmaker[Session], settings: Settings, job_id: str) -> dict | None:
    """The job's result bundle (collection), or None while the job is not done."""
    with sessions() as s:
        job = load_finished_job(s, job_id)
    if job is None:
        return None
    return build_bundle(job, job.report_path.read_bytes(), settings.fhir_patient_id_system)


def outbox_location(settings: Settings, job_id: str) -> str:
    """Where the job's outbox bundle is kept: a file, or a blob (``TRIAGE_STORAGE=database``)."""
    if settings.storage == "database":
        return db_location(f"outbox/fhir/{job_id}.json")
    return str(fhir_outbox(settings) / f"{job_id}.json")


def write_outbox(settings: Settings, job: FinishedJob, bundle: dict,
                 sessions: sessionmaker[Session] | None = None) -> Path | str:
    """The bundle into the outbox folder, or (database storage, ``sessions`` given) its blob."""
    from worker.durable import write_atomic

    if settings.storage == "database" and sessions is not None:
        location = outbox_location(settings, job.job_id)
        with sessions.begin() as s:
            put_blob(s, key_of(location), bundle_json(bundle))
        return location
    folder = fhir_outbox(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job.job_id}.json"
    write_atomic(path, bundle_json(bundle))  # fsync of file and folder before it counts
    return path


def post_bundle(settings: Settings, bundle: dict) -> None:
    """POST a transaction bundle to the FHIR base URL; raise :class:`DeliveryError` on failure."""
    import httpx

    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    token = settings.fhir_bearer_token.get_secret_value()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.post(settings.fhir_endpoint, content=bundle_json(bundle),
                              headers=headers, timeout=settings.delivery_timeout_s)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"FHIR endpoint unreachable ({type(exc).__name__})") from None
    raise_for_http_status(response.status_code, "FHIR endpoint")

