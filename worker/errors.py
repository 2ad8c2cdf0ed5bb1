"""One error hierarchy: rejected input (terminal, recorded) and transient trouble (retried)."""


class TriageError(Exception):
    """Base class of melanoma-triage errors."""


class InputRejected(TriageError):
    """The input can never be processed. Recorded with its reason; never retried."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class TransientError(TriageError):
    """Something outside the input failed (database, broker, disk): retry with backoff."""


class ModelNotAvailable(TriageError):
    """The model store has no usable current version."""
