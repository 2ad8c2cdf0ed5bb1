"""One frozen settings object, read from the environment (prefix ``TRIAGE_``) at the entry points.

Embedded defaults need no server: an SQLite database and Celery's filesystem broker, all
under one home folder. Production sets ``TRIAGE_DATABASE_URL`` (PostgreSQL) and
``TRIAGE_BROKER_URL`` (Redis).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
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

    poll_interval_s: float = Field(2.0, gt=0, description="Intake folder scan period")
    stable_scans: int = Field(2, ge=1, description="Scans with unchanged size and mtime before a file is taken")
    max_attempts: int = Field(3, ge=1, description="Deliveries of one job before it is marked failed")
    task_soft_time_limit_s: int = 120
    task_time_limit_s: int = 180
    stale_after_s: int = Field(600, description="A queued/running job untouched this long is re-enqueued")
    reconcile_interval_s: float = 60.0
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
