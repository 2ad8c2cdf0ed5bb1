"""One error hierarchy: rejected input (terminal, recorded) and transient trouble (retried)."""

from __future__ import annotations

from schemas import RejectionReason


class TriageError(Exception):
    """Base class of melanoma-triage errors."""


class InputRejected(TriageError):
    """The input can never be processed. Recorded with its reason; never retried."""

    def __init__(self, code: RejectionReason, reason: str) -> None:
        code = RejectionReason(code)
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason


class TransientError(TriageError):
    """Something outside the input failed (database, broker, disk): retry with backoff."""


class ModelNotAvailable(TransientError):
    """The model store has no usable current version: an operations problem, not the image's
    fault, so it is retried until someone promotes a model (the attempts cap still applies)."""
