"""The urgent-result webhook: a small signed JSON POST, so an urgent result does not wait to
be read.

The payload is minimal on purpose: no patient name or id, only what lets the receiver find
the result (job id, accession number) and act on it. The body is signed with
HMAC-SHA256 under ``TRIAGE_WEBHOOK_SECRET``; the receiver recomputes it over the raw body
(:func:`verify_signature`). ``event_id`` is the same on every retry, so a receiver that got
a message twice can drop the second.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from worker.results.errors import DeliveryError, DeliveryRefused, raise_for_http_status
from worker.results.finished_job import FinishedJob
from worker.settings import Settings

SIGNATURE_HEADER = "X-Triage-Signature"
EVENT_HEADER = "X-Triage-Event"
URGENT_EVENT = "result.urgent"


def payload(job: FinishedJob) -> dict:
    return {
        "event": URGENT_EVENT,
        "event_id": f"{job.job_id}/{URGENT_EVENT}",
        "job_id": job.job_id,
        "triage": job.triage.value,
        "melanoma_probability": round(job.melanoma_probability, 6),
        "model_version": job.model_version,
        "accession_number": job.metadata.accession_number,
        "finished_at": job.finished_at.isoformat(),
    }


def body_bytes(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def signature(secret: str, body: bytes) -> str:
    """The header value: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does (constant-time comparison)."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


def post_urgent(settings: Settings, job: FinishedJob) -> None:
    """POST the signed payload; raise :class:`DeliveryError` on failure."""
    import httpx

    secret = settings.webhook_secret.get_secret_value()
    if not secret:
        raise DeliveryRefused("TRIAGE_WEBHOOK_SECRET is not set: unsigned webhooks are not sent")
    body = body_bytes(payload(job))
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body),
               EVENT_HEADER: URGENT_EVENT}
    try:
        response = httpx.post(settings.webhook_url, content=body, headers=headers,
                              timeout=settings.delivery_timeout_s)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"webhook unreachable ({type(exc).__name__})") from None
    raise_for_http_status(response.status_code, "webhook")
