"""One-page PDF triage reports (plain functions; no Celery).

``content`` is the record a report shows, ``layout`` draws it (reportlab), ``pdf``
names and writes the file.
"""

from worker.report.content import ReportContent
from worker.report.pdf import render_report, report_filename

__all__ = ["ReportContent", "render_report", "report_filename"]
