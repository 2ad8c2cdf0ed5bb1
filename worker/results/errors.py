"""Why a delivery failed. Messages are stored in ``deliveries.last_error`` and shown by
``status``, so they carry DICOM statuses, HTTP codes and exception types, never patient data."""

from __future__ import annotations

from worker.errors import TransientError


class DeliveryError(TransientError):
    """One attempt to hand a result to a destination failed; it is retried with backoff."""


class DeliveryRefused(DeliveryError):
    """The destination can never take this result as configured (a retry cannot help)."""


def raise_for_http_status(code: int, what: str) -> None:
    """2xx passes; a client error other than timeout/too-early/rate-limit is refused for good."""
    if 200 <= code < 300:
        return
    if 400 <= code < 500 and code not in (408, 425, 429):
        raise DeliveryRefused(f"{what} refused the request: HTTP {code}")
    raise DeliveryError(f"{what} answered HTTP {code}")
