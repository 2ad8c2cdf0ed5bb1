"""melanoma-triage worker: intake, classification, storage and PDF triage reports."""

__version__ = "0.1.0"
