"""One job, start to finish: decode, check, classify, report, persist. No Celery here.

No side effect before the database accepts the job's row: the PDF is rendered to a hidden
pending file, the result rows are flushed (lengths and constraints checked) while this
attempt holds the job's row, the PDF is renamed into place, and the transaction commits
(the pending file is deleted if the database refuses). Outbound results are sent after
``done``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from schemas import ImageMetadata, PredictionResult
from worker.db import jobs
from worker.errors import InputRejected
from worker.jobs.heartbeat import JobHeartbeat
from worker.imaging import DecodeLimits, decode_bytes
from worker.imaging.decode import DRAFT_MIN_SIDE
from worker.imaging.quality import assess_quality
from worker.intake.rejections import record_rejection
from worker.report import ReportContent, render_report, report_filename
from worker.report.wording import referral_wording, triage_sentence
from worker.jobs.runtime import Runtime

log = logging.getLogger(__name__)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def process_job(rt: Runtime, job_id: str) -> str:
    """Returns the job's final state. Idempotent: a finished job is left as it is."""
    settings = rt.settings
    with rt.sessions.begin() as s:
        item = jobs.start_attempt(s, job_id, settings.max_attempts,
                                  lease=timedelta(seconds=settings.job_lease_s))
    if item is None:
        log.info("job %s: nothing to do (finished, held by a live attempt, or out of attempts)",
                 job_id)
        return "skipped"
    with JobHeartbeat(rt.sessions, job_id, item.attempt, settings.job_lease_s,
                      max_s=settings.task_time_limit_s) as lease:
        return _process(rt, item, lease)


def _process(rt: Runtime, item: jobs.WorkItem, lease: JobHeartbeat) -> str:
    """The attempt ``item``, under its lease: the report is written only while it is held."""
    settings, job_id = rt.settings, item.job_id
    try:
        data = rt.storage.read(item.archive_path)
        decoded = decode_bytes(
            data, DecodeLimits(max_bytes=settings.max_file_bytes, max_pixels=settings.max_image_pixels),
            draft_min_side=DRAFT_MIN_SIDE,  # a large JPEG decoded at the size triage needs
        )
    except InputRejected as exc:
        record_rejection(rt.sessions, rt.storage.rejected, job_id, exc.code, exc.reason, data=data)
        log.info("job %s rejected: %s", job_id, exc.code.value)
        return "rejected"

    usable, quality_reason = assess_quality(decoded.rgb)
    classifier = rt.models.get()
    result = classifier.predict(decoded.rgb, usable_image=usable)
    metadata: ImageMetadata = item.caller_metadata.merged_over(decoded.metadata)
    thresholds = classifier.metadata.thresholds
    original_name = item.original_name  # printed, and names an image without ids
    filename = report_filename(metadata, job_id, original_name)
    report_path = rt.storage.report_location(filename)  # a path, or db:reports/<name>
    lease.check()  # a superseded attempt must not overwrite the report of the one that won
    pending = rt.storage.report_pending(filename)  # becomes report_path once the database agrees
    report_sha = render_report(
        ReportContent(
            job_id=job_id,
            metadata=metadata,
            image_rgb=decoded.rgb,
            probabilities=result.probabilities,
            triage=result.triage,
            triage_explanation=triage_sentence(result.probabilities, thresholds, result.triage, quality_reason),
            thresholds=thresholds,
            model_version=result.model_version,
            image_sha256=item.image_sha256,
            received_at=_aware(item.received_at),
            reported_at=datetime.now(timezone.utc),
            quality_note=quality_reason,
            # embedded as it is when it shows the pixels as classified (no second encoding)
            source_jpeg=data if decoded.source_format == "jpeg" else None,
            original_name=original_name,
            predicted_class=result.predicted_class,
            timezone=settings.timezone,
            referral_wording=referral_wording(result.triage, settings.referral_wording),
            calibration_note=classifier.calibration_note,
        ),
        pending,
        private=True,  # fsynced there; storage.place_report puts it into place durably
    )
    facts = {
        "source_format": decoded.source_format,
        "width": decoded.width,  # as the file declares it (a large JPEG is decoded smaller)
        "height": decoded.height,
        "transfer_syntax": decoded.transfer_syntax,
        "photometric": decoded.photometric,
    }
    shadow = _shadow_prediction(rt, decoded.rgb, usable, job_id)
    stored = _commit(rt, item, pending, report_path, lambda s: jobs.complete(
        s, job_id, metadata, facts, result, usable, str(report_path), report_sha,
        shadow_results=shadow, attempt=item.attempt))
    if not stored:
        pending.unlink(missing_ok=True)
        log.info("job %s: attempt %d was superseded; its result is not stored", job_id, item.attempt)
        return "skipped"
    log.info("job %s done: %s (model %s)", job_id, result.triage.value, result.model_version)
    return "done"


def _commit(rt: Runtime, item: jobs.WorkItem, pending, report_path: str, complete) -> bool:
    """Store the result rows (``complete(session)``) and put the report into place in the
    same transaction, before the commit; False when the attempt was superseded."""
    placed = False
    try:
        with rt.sessions.begin() as s:
            stored = complete(s)
            if stored:
                s.flush()  # the database has accepted the rows (lengths, constraints) ...
                # ... and holds the job's row for this attempt: the report goes into place
                # now, before the commit. A kill between the two leaves the job unfinished,
                # so it runs again and renames over the same path; placed after the commit,
                # a kill would leave a done job with no report. On database storage the
                # report is a row of this transaction (worker.storage).
                rt.storage.place_report(s, pending, report_path)
                placed = True
        if stored:
            rt.storage.report_placed(pending, report_path)
    except BaseException:
        if not placed or rt.storage.kind == "database":
            pending.unlink(missing_ok=True)  # no report beside a job the database refused
        raise  # placed but the commit failed: the retry writes the same path again
    return stored



def _shadow_prediction(rt: Runtime, rgb, usable: bool, job_id: str) -> tuple[PredictionResult, ...]:
    """Run the shadow candidate, if any; its trouble never touches the reported result."""
    try:
        candidate = rt.models.get_shadow()
        return (candidate.predict(rgb, usable_image=usable),) if candidate else ()
    except Exception as exc:
        log.warning("job %s: shadow model failed (%s); reported result unaffected",
                    job_id, type(exc).__name__)
        return ()
