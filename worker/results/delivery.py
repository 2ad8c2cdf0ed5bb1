"""Deliver one finished job's results everywhere they are configured to go.

:func:`deliver_results` is the entry point (a Celery task calls it once a job is done;
``melanoma-triage deliveries resend`` calls it again). It is idempotent: every
(job, kind, destination) is a row in ``deliveries``, and a row that was sent is never sent
again. Each pending row is tried up to ``delivery_attempts`` times with exponential
backoff, then left ``dead`` for ``status`` to show and ``resend`` to retry.

Where results go:
* DICOM: every ``TRIAGE_DICOM_DESTINATIONS`` entry, plus the calling AE when
  ``TRIAGE_DICOM_RETURN_TO_CALLER`` is on and that AE is listed in ``TRIAGE_DICOM_KNOWN_PEERS``
  (an association tells us the caller's AE title, never the port its SCP listens on).
* FHIR: always written to ``<home>/outbox/fhir/<job>.json``; POSTed when
  ``TRIAGE_FHIR_ENDPOINT`` is set.
* Webhook: urgent results only, when ``TRIAGE_WEBHOOK_URL`` is set.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from schemas import TriageLevel
from worker.db import deliveries
from schemas import DeliveryKind, DeliveryState
from worker.results.dicom_sender import DicomDestination, parse_destinations
from worker.results.errors import DeliveryError, DeliveryRefused
from worker.results.finished_job import FinishedJob, load_finished_job
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryOutcome:
    """Where one result went and how it ended (for logs, the CLI and the Celery task)."""

    delivery_id: str
    kind: str
    destination: str
    state: str
    attempts: int
    last_error: str | None


def dicom_outbox(settings: Settings, job_id: str) -> Path:
    return settings.home / "outbox" / "dicom" / job_id


def display_url(url: str) -> str:
    """A URL as stored and shown: no credentials; a path or query (which may hold a token)
    is replaced by a short hash of the whole URL, so two endpoints still differ."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    shown = f"{parts.scheme}://{host}"
    if parts.path.strip("/") or parts.query:
        shown += "/#" + hashlib.sha256(url.strip().encode("utf-8")).hexdigest()[:12]
    return shown


def backoff_s(settings: Settings, attempt: int) -> float:
    """Delay after failed attempt ``attempt`` (1-based): base, 2x base, 4x base... capped."""
    return min(settings.delivery_backoff_s * (2 ** (attempt - 1)), settings.delivery_backoff_max_s)


def planned_destinations(settings: Settings, job: FinishedJob) -> list[tuple[DeliveryKind, str]]:
    """Every (kind, destination) this job's results go to under the current settings."""
    plan: list[tuple[DeliveryKind, str]] = []
    dicom = [str(d) for d in parse_destinations(settings.dicom_destinations)]
    if settings.dicom_return_to_caller and job.calling_ae_title:
        peers = {d.ae_title: str(d) for d in parse_destinations(settings.dicom_known_peers)}
        caller = peers.get(job.calling_ae_title.strip())
        if caller is None:
            log.warning("job %s: calling AE %s is not in TRIAGE_DICOM_KNOWN_PEERS; results not "
                        "returned to it", job.job_id, job.calling_ae_title)
        else:
            dicom.append(caller)
    plan += [(DeliveryKind.DICOM, d) for d in dict.fromkeys(dicom)]
    if settings.fhir_endpoint:
        plan.append((DeliveryKind.FHIR, display_url(settings.fhir_endpoint)))
    if settings.webhook_url and job.triage == TriageLevel.URGENT:
        plan.append((DeliveryKind.WEBHOOK, display_url(settings.webhook_url)))
    return plan


class _Artifacts:
    """What the senders need, built at most once per call and only when something is sent."""

    def __init__(self, settings: Settings, job: FinishedJob) -> None:
        self.settings, self.job = settings, job
        self._dicom_paths: list[Path] | None = None
        self._transaction: dict | None = None

    def dicom_paths(self) -> list[Path]:
        if self._dicom_paths is None:
            from worker.results.dicom_objects import write_objects
            from worker.results.dicom_results import build_dicom_results

            objects = build_dicom_results(self.job, self.settings.dicom_image_sop_class)
            self._dicom_paths = write_objects(objects, dicom_outbox(self.settings, self.job.job_id))
        return self._dicom_paths

    def transaction(self) -> dict:
        if self._transaction is None:
            from worker.results.fhir import build_bundle

            self._transaction = build_bundle(self.job, self.job.report_path.read_bytes(),
                                             self.settings.fhir_patient_id_system, "transaction")
        return self._transaction


def _sender(settings: Settings, job: FinishedJob, artifacts: _Artifacts, kind: DeliveryKind,
            destination: str) -> Callable[[], None]:
    """The call that makes one attempt; it raises DeliveryError (or anything) on failure."""
    if kind == DeliveryKind.DICOM:
        from worker.results.dicom_sender import send_files

        target = DicomDestination.parse(destination)
        return lambda: send_files(target, artifacts.dicom_paths(), settings.dicom_ae_title,
                                  settings.delivery_timeout_s)
    if kind == DeliveryKind.FHIR:
        from worker.results.fhir import post_bundle

        if not settings.fhir_endpoint or display_url(settings.fhir_endpoint) != destination:
            raise DeliveryRefused("this FHIR endpoint is no longer configured")
        return lambda: post_bundle(settings, artifacts.transaction())
    from worker.results.webhook import post_urgent

    if not settings.webhook_url or display_url(settings.webhook_url) != destination:
        raise DeliveryRefused("this webhook URL is no longer configured")
    return lambda: post_urgent(settings, job)


def _attempt_until_done(sessions: sessionmaker[Session], settings: Settings, delivery_id: str,
                        make_send: Callable[[], Callable[[], None]], sleep: Callable[[float], None],
                        label: str) -> None:
    """Try one delivery until it is sent, refused, or out of attempts."""
    while True:
        with sessions.begin() as s:
            attempt = deliveries.start_attempt(s, delivery_id)
        if attempt is None:
            return  # sent or dead meanwhile (another worker, or a resend)
        try:
            make_send()()
        except DeliveryRefused as exc:
            error, dead = str(exc), True
        except DeliveryError as exc:
            error, dead = str(exc), attempt >= settings.delivery_attempts
        except Exception as exc:  # noqa: BLE001 - any failure is recorded; its text may hold data
            error, dead = f"unexpected {type(exc).__name__}", attempt >= settings.delivery_attempts
            log.warning("%s: attempt %d failed unexpectedly (%s)", label, attempt, type(exc).__name__)
        else:
            with sessions.begin() as s:
                deliveries.mark_sent(s, delivery_id)
            log.info("%s: sent (attempt %d)", label, attempt)
            return
        with sessions.begin() as s:
            deliveries.record_failure(s, delivery_id, error, dead)
        if dead:
            log.warning("%s: dead letter after %d attempt(s): %s", label, attempt, error)
            return
        delay = backoff_s(settings, attempt)
        log.info("%s: attempt %d failed (%s); retrying in %.1f s", label, attempt, error, delay)
        sleep(delay)


def deliver_results(settings: Settings, sessions: sessionmaker[Session], job_id: str,
                    sleep: Callable[[float], None] = time.sleep) -> list[DeliveryOutcome]:
    """Build and send everything for one finished job; safe to call again at any time.

    Returns every delivery of the job (also those sent earlier); empty while the job is not
    done. Blocks through retries (at most ``delivery_attempts`` per destination).
    """
    with sessions() as s:
        job = load_finished_job(s, job_id)
    if job is None:
        log.info("job %s: no results to deliver (not done)", job_id)
        return []
    _write_fhir_outbox(settings, job, sessions)
    plan = planned_destinations(settings, job)
    with sessions.begin() as s:
        rows = [deliveries.ensure(s, job_id, kind, dest) for kind, dest in plan]
        every = deliveries.for_job(s, job_id)
        # Rows a resend reopened whose destination left the configuration are tried too.
        rows += [r for r in every if r.state == DeliveryState.PENDING.value and r not in rows]
        pending = [(r.id, DeliveryKind(r.kind), r.destination) for r in rows
                   if r.state == DeliveryState.PENDING.value]
        if not pending:  # nothing to send (the usual case: only the outbox): no second read
            return [_outcome(r) for r in every]
    artifacts = _Artifacts(settings, job)
    for delivery_id, kind, destination in pending:
        label = f"job {job_id} {kind.value} -> {destination}"
        _attempt_until_done(sessions, settings, delivery_id,
                            lambda k=kind, d=destination: _sender(settings, job, artifacts, k, d),
                            sleep, label)
    return outcomes(sessions, job_id)


def _write_fhir_outbox(settings: Settings, job: FinishedJob, sessions: sessionmaker[Session]) -> None:
    """The outbox copy is for people and the HTTP API; failing to write it stops nothing."""
    from worker.results.fhir import build_bundle, write_outbox

    try:
        bundle = build_bundle(job, job.report_path.read_bytes(), settings.fhir_patient_id_system)
        write_outbox(settings, job, bundle, sessions)
    except Exception as exc:  # noqa: BLE001 - logged by type only (the text may hold data)
        log.warning("job %s: FHIR outbox not written (%s)", job.job_id, type(exc).__name__)


def _outcome(row: deliveries.Delivery) -> DeliveryOutcome:
    return DeliveryOutcome(row.id, row.kind, row.destination, row.state, row.attempts,
                           row.last_error)


def outcomes(sessions: sessionmaker[Session], job_id: str) -> list[DeliveryOutcome]:
    with sessions() as s:
        return [_outcome(r) for r in deliveries.for_job(s, job_id)]


def resend(settings: Settings, sessions: sessionmaker[Session], job_id: str | None = None,
           delivery_id: str | None = None, sleep: Callable[[float], None] = time.sleep,
           ) -> dict[str, list[DeliveryOutcome]]:
    """Dead letters (all, one job's, or one) back to pending, then delivered again."""
    with sessions.begin() as s:
        job_ids = deliveries.reopen(s, job_id=job_id, delivery_id=delivery_id)
    return {jid: deliver_results(settings, sessions, jid, sleep=sleep) for jid in job_ids}
