"""Finished jobs made in code for the results tests (worker/results): an archived input
(DICOM, JPEG or PNG), a small real PDF report, and the rows a done job has, written
straight through the ORM so no model or worker is needed."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from schemas import CLASS_NAMES, ImageMetadata, JobState, TriageLevel
from tests.imagegen import dicom_bytes, jpeg_bytes, lesion_rgb, png_bytes
from worker.db.models import Image, Job, Prediction, Report
from worker.intake.archive import sha256_bytes
from worker.results.finished_job import FinishedJob

RECEIVED = datetime(2026, 11, 20, 9, 30, 5, tzinfo=timezone.utc)
FINISHED = datetime(2026, 11, 20, 9, 30, 9, tzinfo=timezone.utc)
MODEL_VERSION = "tiny-test-1"
INPUT_STUDY_UID = "1.2.826.0.1.3680043.8.498.1"  # tests.imagegen.DEFAULT_DICOM_METADATA
INPUT_SOP_UID = "1.2.826.0.1.3680043.8.498.1.1.1"


def pdf_bytes(text: str = "Dermoscopy triage report") -> bytes:
    from io import BytesIO

    from reportlab.pdfgen import canvas

    buf = BytesIO()
    c = canvas.Canvas(buf)
    c.drawString(72, 760, text)
    c.save()
    return buf.getvalue()


def probabilities(melanoma: float) -> dict[str, float]:
    rest = (1.0 - melanoma) / (len(CLASS_NAMES) - 1)
    return {name: (melanoma if name == "melanoma" else rest) for name in CLASS_NAMES}


def input_bytes(fmt: str, rgb=None, dicom_metadata: dict | None = None, **dicom_kwargs) -> bytes:
    rgb = lesion_rgb((96, 128)) if rgb is None else rgb
    if fmt == "dicom":
        return dicom_bytes(rgb, metadata=dicom_metadata, **dicom_kwargs)
    if fmt == "jpeg":
        return jpeg_bytes(rgb)
    return png_bytes(rgb)


def dicom_metadata() -> ImageMetadata:
    """What the pipeline stores for the default DICOM fixture."""
    return ImageMetadata(patient_id="TEST-0001", patient_name="Doe^Jane", accession_number="ACC0001",
                         study_instance_uid=INPUT_STUDY_UID,
                         series_instance_uid="1.2.826.0.1.3680043.8.498.1.1",
                         sop_instance_uid=INPUT_SOP_UID,
                         sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.7", laterality="L")


def finished_job(folder: Path, fmt: str = "dicom", triage: TriageLevel = TriageLevel.URGENT,
                 melanoma: float = 0.83, predicted_class: str = "melanoma",
                 metadata: ImageMetadata | None = None, data: bytes | None = None,
                 job_id: str = "0123456789abcdef0123456789abcdef") -> FinishedJob:
    """A FinishedJob with its archive file and report on disk, no database."""
    folder.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else input_bytes(fmt)
    archive = folder / f"{job_id}.{fmt}"
    archive.write_bytes(data)
    report = folder / f"{job_id}.pdf"
    report.write_bytes(pdf_bytes())
    if metadata is None:
        metadata = dicom_metadata() if fmt == "dicom" else ImageMetadata(patient_id="P-JPEG-7",
                                                                         laterality="R")
    return FinishedJob(
        job_id=job_id, metadata=metadata, model_version=MODEL_VERSION,
        probabilities=probabilities(melanoma), predicted_class=predicted_class, triage=triage,
        image_usable=True, report_path=report, report_sha256=sha256_bytes(report.read_bytes()),
        archive_path=archive, image_sha256=sha256_bytes(data), source_format=fmt,
        received_at=RECEIVED, finished_at=FINISHED,
    )


def insert_done_job(sessions, settings, fmt: str = "dicom", triage: TriageLevel = TriageLevel.URGENT,
                    melanoma: float = 0.83, predicted_class: str = "melanoma",
                    metadata: ImageMetadata | None = None, data: bytes | None = None) -> str:
    """A done job in the database (images, jobs, predictions, reports rows); returns its id."""
    data = data if data is not None else input_bytes(fmt)
    sha = sha256_bytes(data)
    archive = settings.archive_dir / f"{sha}.{fmt}"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(data)
    if metadata is None:
        metadata = dicom_metadata() if fmt == "dicom" else ImageMetadata(patient_id="P-JPEG-7")
    with sessions.begin() as s:
        image = Image(sha256=sha, archive_path=str(archive), size_bytes=len(data), source_door="cli",
                      received_at=RECEIVED, source_format=fmt, width=128, height=96,
                      **metadata.model_dump())
        s.add(image)
        s.flush()
        job = Job(image_id=image.id, state=JobState.DONE.value, attempts=1, finished_at=FINISHED)
        s.add(job)
        s.flush()
        report = settings.reports_dir / f"{job.id}.pdf"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_bytes(pdf_bytes())
        probs = probabilities(melanoma)
        s.add(Prediction(job_id=job.id, model_version=MODEL_VERSION, shadow=False,
                         predicted_class=predicted_class, triage_level=triage.value,
                         image_usable=True, **{f"p_{n}": p for n, p in probs.items()}))
        s.add(Report(job_id=job.id, path=str(report), sha256=sha256_bytes(report.read_bytes())))
        return job.id


# --------------------------------------------------------------------------- peers


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StoreSCP:
    """dcmtk's storescp (AE ``PACS``) accepting every storage SOP class; use as a context."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.proc = None

    def __enter__(self) -> StoreSCP:
        import shutil
        import socket
        import subprocess
        import time

        assert shutil.which("storescp"), "dcmtk is part of the test setup (scripts/setup.sh)"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "--aetitle", "PACS", "--promiscuous", "--output-directory",
             str(self.folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("storescp did not start")

    @property
    def destination(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"

    def received(self) -> list[Path]:
        return sorted(self.folder.iterdir())

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class RecordingHTTPServer:
    """A local HTTP server that records every POST and answers from a list of statuses
    (the last one repeats); use as a context. ``url`` is its address."""

    def __init__(self, statuses: tuple[int, ...] = (200,)) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []

    def __enter__(self) -> RecordingHTTPServer:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/triage"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
