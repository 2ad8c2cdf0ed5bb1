"""One-page PDF triage reports (plain functions; no Celery)."""

from worker.report.pdf import ReportContent, render_report, report_filename

__all__ = ["ReportContent", "render_report", "report_filename"]
