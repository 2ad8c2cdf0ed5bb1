"""One job, start to finish: decode, check, classify, report, persist. No Celery here."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from schemas import ImageMetadata, PredictionResult
from worker.classify.triage import explain
from worker.db import jobs
from worker.errors import InputRejected
from worker.imaging import DecodeLimits, decode_bytes
from worker.imaging.quality import assess_quality
from worker.intake import archive
from worker.intake.rejections import record_rejection
from worker.report import ReportContent, render_report, report_filename
from worker.runtime import Runtime

log = logging.getLogger(__name__)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def process_job(rt: Runtime, job_id: str) -> str:
    """Returns the job's final state. Idempotent: a finished job is left as it is."""
    settings = rt.settings
    with rt.sessions.begin() as s:
        item = jobs.start_attempt(s, job_id, settings.max_attempts)
    if item is None:
        log.info("job %s: nothing to do (finished or out of attempts)", job_id)
        return "skipped"
    try:
        data = archive.load(item.archive_path)
        decoded = decode_bytes(
            data, DecodeLimits(max_bytes=settings.max_file_bytes, max_pixels=settings.max_image_pixels)
        )
    except InputRejected as exc:
        record_rejection(rt.sessions, settings.rejected_dir, job_id, exc.code, exc.reason, data=data)
        log.info("job %s rejected: %s", job_id, exc.code.value)
        return "rejected"

    usable, quality_reason = assess_quality(decoded.rgb)
    classifier = rt.models.get()
    result = classifier.predict(decoded.rgb, usable_image=usable)
    metadata: ImageMetadata = item.caller_metadata.merged_over(decoded.metadata)
    thresholds = classifier.metadata.thresholds
    report_path = settings.reports_dir / report_filename(metadata, job_id)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    report_sha = render_report(
        ReportContent(
            job_id=job_id,
            metadata=metadata,
            image_rgb=decoded.rgb,
            probabilities=result.probabilities,
            triage=result.triage,
            triage_explanation=explain(result.probabilities, thresholds, result.triage, quality_reason),
            thresholds=thresholds,
            model_version=result.model_version,
            image_sha256=item.image_sha256,
            received_at=_aware(item.received_at),
            reported_at=datetime.now(timezone.utc),
            quality_note=quality_reason,
        ),
        report_path,
    )
    facts = {
        "source_format": decoded.source_format,
        "width": int(decoded.rgb.shape[1]),
        "height": int(decoded.rgb.shape[0]),
        "transfer_syntax": decoded.transfer_syntax,
        "photometric": decoded.photometric,
    }
    shadow = _shadow_prediction(rt, decoded.rgb, usable, job_id)
    with rt.sessions.begin() as s:
        jobs.complete(s, job_id, metadata, facts, result, usable, str(report_path), report_sha,
                      shadow_results=shadow)
    log.info("job %s done: %s (model %s)", job_id, result.triage.value, result.model_version)
    return "done"


def _shadow_prediction(rt: Runtime, rgb, usable: bool, job_id: str) -> tuple[PredictionResult, ...]:
    """Run the shadow candidate, if any; its trouble never touches the reported result."""
    try:
        candidate = rt.models.get_shadow()
        return (candidate.predict(rgb, usable_image=usable),) if candidate else ()
    except Exception as exc:
        log.warning("job %s: shadow model failed (%s); reported result unaffected",
                    job_id, type(exc).__name__)
        return ()
