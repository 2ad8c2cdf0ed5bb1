"""Retention of patient images (``TRIAGE_RETENTION_DAYS``): ``worker.retention.purge``."""
