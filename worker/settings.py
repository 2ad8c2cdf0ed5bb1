"""One frozen settings object, read from the environment (prefix ``TRIAGE_``) at the entry points.

Embedded defaults need no server: an SQLite database and Celery's filesystem broker, all
under one home folder. Production sets ``TRIAGE_DATABASE_URL`` (PostgreSQL) and
``TRIAGE_BROKER_URL`` (Redis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("triage-data")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIAGE_", frozen=True, extra="ignore")

    home: Path = Field(DEFAULT_HOME, description="Folder that holds everything on embedded defaults")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///<home>/triage.db")
    broker_url: str = Field("", description="Celery broker URL; default filesystem broker under <home>/broker")
    intake_dir: Path | None = None
    reports_dir: Path | None = None
    rejected_dir: Path | None = None
    archive_dir: Path | None = None
    model_store_dir: Path | None = None

    poll_interval_s: float = Field(1.0, gt=0, description="Intake folder scan period")
    stable_scans: int = Field(2, ge=1, description="Scans with unchanged size and mtime before a file is taken")
    stable_seconds: float = Field(
        30.0, ge=0, description="A dropped file is taken only after its size and mtime have not changed "
        "for this long (long enough for a copy over a slow network share that stalls)")
    incomplete_grace_seconds: float = Field(
        120.0, ge=0, description="A taken file that ends early (no JPEG end marker, no PNG IEND, a DICOM "
        "element cut) is held this long, unchanged, in case its writer resumes; then it is judged as it is")
    max_attempts: int = Field(3, ge=1, description="Deliveries of one job before it is marked failed")
    task_soft_time_limit_s: int = 120
    task_time_limit_s: int = 180
    stale_after_s: int = Field(600, gt=0, description="A queued job with no message sent this long is sent again (once per period)")
    reconcile_interval_s: float = Field(10.0, gt=0, description="Reconciler period (beat): re-sends jobs of dead workers")
    job_lease_s: int = Field(20, ge=2, description="Lease of a running attempt, renewed every third; once past, the job is sent again")
    supervisor_max_restarts: int = Field(5, ge=1, description="run gives up when a child exits this often within the window")
    supervisor_window_s: float = Field(60.0, gt=0, description="Window of supervisor_max_restarts (seconds)")
    supervisor_backoff_max_s: float = Field(30.0, gt=0, description="Longest wait before restarting a child")
    worker_concurrency: int = 1
    tf_threads: int = Field(1, ge=1, description="TensorFlow intra-op threads per worker process")
    max_image_pixels: int = 50_000_000
    max_file_bytes: int = 200 * 1024 * 1024
    retrain_cron: str = Field("0 3 * * 0", description="Retraining schedule (crontab: min hour dom month dow)")
    # Retraining (worker/retrain): base data, trainer, locked evaluation set and gate policy.
    training_data_dirs: list[Path] = Field(default_factory=list, description="Base training data roots (JSON list)")
    retrain_trainer: str = Field("worker.retrain.training:train_product", description="module:function")
    retrain_train_args: dict = Field(default_factory=dict, description="TrainConfig overrides (JSON)")
    retrain_eval_fraction: float = Field(0.15, gt=0, lt=1, description="Share of new images locked for evaluation")
    retrain_auc_margin: float = Field(0.02, ge=0, description="Melanoma AUC non-inferiority margin")
    retrain_min_sensitivity: float = Field(0.95, ge=0, le=1, description="Urgent melanoma sensitivity gate")
    retrain_max_ece: float = Field(0.10, ge=0, le=1, description="Calibration error gate")
    retrain_min_positives: int = Field(10, ge=1, description="Melanomas (and others) the locked set needs")
    retrain_lock_ttl_s: int = Field(600, ge=10, description="Retraining lease; renewed every third of it")
    retrain_time_limit_s: int = Field(6 * 3600, ge=60, description="Hard time limit of the retrain task")
    promotion_requires_approval: bool = Field(
        False, description="A retrained challenger that passes the gates waits as pending_approval for "
        "`models approve VERSION --by --reason` instead of becoming current")
    # Network doors (worker/doors): DICOM C-STORE receiver and HTTP API.
    dicom_enabled: bool = Field(True, description="melanoma-triage run starts the DICOM receiver")
    http_enabled: bool = Field(True, description="melanoma-triage run starts the HTTP API")
    dicom_ae_title: str = Field("MELTRIAGE", min_length=1, max_length=16, description="Our AE title")
    dicom_host: str = Field("0.0.0.0", description="Address the DICOM receiver listens on")
    dicom_port: int = Field(11112, ge=0, le=65535, description="DICOM receiver port (0: any free port)")
    dicom_allowed_calling_aets: str = Field("", description="Comma-separated; empty: any")
    dicom_max_associations: int = Field(10, ge=1, description="Concurrent associations the receiver accepts")
    dicom_acse_timeout_s: float = Field(30.0, gt=0, description="Association negotiation timeout")
    dicom_dimse_timeout_s: float = Field(60.0, gt=0, description="Timeout waiting for a DIMSE message")
    dicom_network_timeout_s: float = Field(120.0, gt=0, description="Idle association timeout")
    min_free_disk_bytes: int = Field(512 * 1024 * 1024, ge=0, description="Doors refuse images under this")
    max_backlog: int = Field(10_000, ge=1, description="Waiting jobs; doors refuse more")
    http_host: str = Field("0.0.0.0", description="Address the HTTP API listens on")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP API port (0: any free port)")
    # Clinician workspace (worker/workspace): pages under /ui/ of the HTTP API.
    ui_secure_cookies: Literal["auto", "true", "false"] = Field(
        "auto", description="Session cookies marked Secure: auto = Secure unless the page is plain "
        "http on this machine (localhost), and sign-in over plain http from elsewhere is refused; "
        "true = always; false = never (a trusted network without TLS only)")
    ui_session_idle_minutes: int = Field(30, ge=1, description="A workspace session ends after this long unused")
    ui_session_max_hours: int = Field(12, ge=1, description="A workspace session ends this long after sign-in")
    ui_signin_max_failures: int = Field(5, ge=1, description="Failed sign-ins (per user name or per client "
                                        "address) before sign-in is refused for ui_signin_lockout_minutes")
    ui_signin_lockout_minutes: int = Field(15, ge=1, description="Window of ui_signin_max_failures")
    # Results delivery (worker/results): DICOM to PACS, FHIR to the EHR, webhook for urgent results.
    dicom_destinations: str = Field("", description="C-STORE destinations, comma-separated AE@host:port")
    dicom_return_to_caller: bool = Field(False, description="Also send results to the AE that sent the image")
    dicom_known_peers: str = Field("", description="AE@host:port of callers results may return to")
    dicom_image_sop_class: Literal["1.2.840.10008.5.1.4.1.1.77.1.7", "1.2.840.10008.5.1.4.1.1.77.1.4"] = Field(
        "1.2.840.10008.5.1.4.1.1.77.1.7", description="SOP class of a JPEG/PNG input sent to PACS")
    fhir_endpoint: str = Field("", description="FHIR server base URL the result bundle is POSTed to")
    fhir_bearer_token: SecretStr = Field(SecretStr(""), description="Bearer token for the FHIR endpoint (optional)")
    fhir_patient_id_system: str = Field("", description="Identifier system of patient ids in FHIR")
    webhook_url: str = Field("", description="Urgent results are POSTed here as signed JSON")
    webhook_secret: SecretStr = Field(SecretStr(""), description="HMAC-SHA256 key of the webhook signature")
    delivery_attempts: int = Field(5, ge=1, description="Attempts per destination before a dead letter")
    delivery_backoff_s: float = Field(2.0, ge=0, description="First retry delay; doubles each attempt")
    delivery_backoff_max_s: float = Field(60.0, ge=0, description="Longest retry delay")
    delivery_timeout_s: float = Field(30.0, gt=0, description="Network timeout of one delivery attempt")
    # Operations (issue 18): liveness probes of the roles and the group that may read reports.
    health_probe_interval_s: float = Field(
        10.0, gt=0, description="run sends each worker role (triage, deliver, maintenance) a no-op "
        "probe task this often")
    health_probe_timeout_s: float = Field(
        60.0, gt=0, description="A role whose probe is not answered within this long is down and is "
        "restarted by run (longer than a worker's start-up and one image)")
    data_group: str = Field("", description="A group that may read reports (and the folders up to "
                            "them); empty: only the service's own user")
    # Intake and reports for people (issue 19).
    settle_seconds: float = Field(
        1.0, ge=0, description="A dropped file whose content is whole (JPEG end marker, PNG IEND, every "
        "DICOM element) is taken once unchanged this long (at most stable_seconds)")
    sidecar_wait_seconds: float = Field(
        2.0, ge=0, description="A dropped image with no sidecar (same stem, .json) or manifest.csv beside "
        "it waits this long after it arrived, in case one follows (at most stable_seconds)")
    sidecar_orphan_seconds: float = Field(
        60.0, ge=0, description="A sidecar with no image of its stem for this long is recorded as "
        "rejected (orphan_sidecar); likewise a manifest.csv whose rows name files that never came")
    timezone: str = Field("UTC", description="IANA time zone the report prints its times in (zone printed)")
    referral_wording: dict[str, str] = Field(
        default_factory=dict, description="Report banner wording per triage level (JSON object: urgent, "
        "soon, routine, indeterminate); a level not given keeps the neutral default")

    # Hosts that share nothing but PostgreSQL and Redis (issue 22).
    storage: Literal["filesystem", "database"] = Field(
        "filesystem", description="Where archived images, report PDFs, rejected inputs, FHIR outbox "
        "bundles and model store versions are kept: folders under the home (filesystem), or the "
        "database's blobs table, so hosts share no folder (database; the model store folder is then "
        "a local cache rebuilt from it)")
    reports_export_dir: Path | None = Field(
        None, description="With storage=database: every report PDF is also written here for staff "
        "who read files (optional; the API serves reports from storage)")
    retention_days: int | None = Field(
        None, ge=1, description="Archived inputs older than this are purged once their job ended "
        "and its results were delivered (default: keep for ever); the locked evaluation set is kept")

    @field_validator("retention_days", "reports_export_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, v):
        """``TRIAGE_RETENTION_DAYS=`` (compose passes an unset variable as empty): not set."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/London)") from None
        return v

    @field_validator("referral_wording")
    @classmethod
    def _referral_wording(cls, v: dict[str, str]) -> dict[str, str]:
        from schemas import TriageLevel

        unknown = set(v) - {level.value for level in TriageLevel}
        if unknown:
            raise ValueError(f"referral_wording keys must be triage levels, not {sorted(unknown)}")
        return v

    @field_validator("dicom_destinations", "dicom_known_peers")
    @classmethod
    def _destinations(cls, v: str) -> str:
        from worker.results.dicom_sender import parse_destinations

        parse_destinations(v)  # fail at start-up, not at the first result
        return v

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        home = self.home.resolve()
        defaults = {
            "home": home,
            "intake_dir": self.intake_dir or home / "intake",
            "reports_dir": self.reports_dir or home / "reports",
            "rejected_dir": self.rejected_dir or home / "rejected",
            "archive_dir": self.archive_dir or home / "archive",
            "model_store_dir": self.model_store_dir or home / "model_store",
            "database_url": self.database_url or f"sqlite:///{home / 'triage.db'}",
            "broker_url": self.broker_url or "filesystem://",
        }
        for key, value in defaults.items():
            object.__setattr__(self, key, value)
        return self

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    def ensure_folders(self) -> None:
        for path in (self.intake_dir, self.reports_dir, self.rejected_dir, self.archive_dir,
                     self.model_store_dir):
            path.mkdir(parents=True, exist_ok=True)
        if self.uses_filesystem_broker:
            (self.broker_dir / "queue").mkdir(parents=True, exist_ok=True)
            (self.broker_dir / "processed").mkdir(parents=True, exist_ok=True)
            (self.broker_dir / "control").mkdir(parents=True, exist_ok=True)
