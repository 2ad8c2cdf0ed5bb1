"""``melanoma-triage db migrate-to URL``: a pilot's home (SQLite, files in folders) copied into
PostgreSQL with database storage, so it can grow into several hosts.

Every table is copied in foreign-key order, in batches, each row inserted only when its
primary key is not there yet: a run interrupted anywhere is finished by running it again.
Stored files travel with their rows: an image's archived bytes and a report's PDF are put
into the blobs table in the same transaction as the row, whose location becomes ``db:<key>``.
Rejected inputs, FHIR outbox bundles and the model store follow. Then every table's primary
keys and every stored file's SHA-256 are compared with the source; a difference is a problem
and the command fails.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, MetaData, Table, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.db.models import Base, Blob
from worker.settings import Settings
from worker.storage import model_sync
from worker.storage.backends import archive_key
from worker.storage.blobs import blob_index, db_location, is_db_location, put_blob

log = logging.getLogger(__name__)

BATCH = 500
#: Leases of the pilot's processes (they end with it) and the stored files (copied from their
#: folders, never from a source that is itself on database storage twice).
SKIPPED_TABLES = {"locks", "alembic_version", "blobs"}


@dataclass
class MigrationResult:
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _all_models() -> None:
    """Every table the code declares, registered on Base.metadata."""
    import worker.db.deliveries  # noqa: F401
    import worker.db.integration  # noqa: F401
    import worker.db.workspace  # noqa: F401


def _tables(source: Engine) -> list[Table]:
    """Declared tables in foreign-key order, then any other table of the source (reflected)."""
    _all_models()
    declared = [t for t in Base.metadata.sorted_tables if t.name not in SKIPPED_TABLES]
    names = set(inspect(source).get_table_names())
    tables = [t for t in declared if t.name in names]
    extra = sorted(names - {t.name for t in declared} - SKIPPED_TABLES)
    if extra:
        reflected = MetaData()
        reflected.reflect(source, only=extra)
        tables += [reflected.tables[name] for name in extra]
    return tables


def _aware(value):
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)  # SQLite keeps UTC times naive
    return value


def _file_location(settings: Settings, session, kind: str, row: dict, result: MigrationResult) -> None:
    """An image's or report's file put into the blobs table; the row then points at it."""
    column = "archive_path" if kind == "images" else "path"
    location = row.get(column)
    if not location or is_db_location(location):
        return
    path = Path(location)
    if not path.is_file():
        result.problems.append(f"{kind} {row['id']}: file missing ({path.name})")
        return
    data = path.read_bytes()
    key = archive_key(row["sha256"]) if kind == "images" and row.get("sha256") else \
        f"{'archive/unhashed' if kind == 'images' else 'reports'}/{path.name}"
    put_blob(session, key, data, replace=False)
    row[column] = db_location(key)
    result.files[kind] = result.files.get(kind, 0) + 1


def _copy_table(settings: Settings, source: Engine, target: Engine, table: Table,
                result: MigrationResult) -> None:
    pk = list(table.primary_key.columns)
    done = {tuple(r) for r in _pks(target, table)}
    sessions = make_session_factory(target)
    with source.connect() as conn:
        rows = conn.execute(select(table).order_by(*pk)).mappings()
        batch: list[dict] = []
        for row in rows:
            if tuple(row[c.name] for c in pk) in done:
                continue
            batch.append({k: _aware(v) for k, v in row.items()})
            if len(batch) >= BATCH:
                _insert_batch(settings, sessions, table, batch, result)
                batch = []
        if batch:
            _insert_batch(settings, sessions, table, batch, result)


def _insert_batch(settings, sessions, table: Table, batch: list[dict], result) -> None:
    """Rows with their files, in one transaction: an interruption loses the batch, not half."""
    with sessions.begin() as s:
        if table.name in ("images", "reports"):
            for row in batch:
                _file_location(settings, s, table.name, row, result)
        s.execute(pg_insert(table).values(batch).on_conflict_do_nothing())


def _pks(engine: Engine, table: Table) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*table.primary_key.columns))]


def _folder_files(settings: Settings) -> dict[str, Path]:
    """Key -> file of the rejected inputs and FHIR outbox bundles of the pilot's home."""
    files = {}
    if settings.rejected_dir.is_dir():
        files.update({f"rejected/{p.name}": p for p in settings.rejected_dir.iterdir()
                      if p.is_file() and not p.name.startswith(".")})
    outbox = settings.home / "outbox" / "fhir"
    if outbox.is_dir():
        files.update({f"outbox/fhir/{p.name}": p for p in outbox.iterdir()
                      if p.is_file() and p.suffix == ".json"})
    return files


def _copy_folder_files(files: dict[str, Path], target: Engine, result: MigrationResult) -> None:
    stored = blob_index(target, "rejected/") | blob_index(target, "outbox/")
    sessions = make_session_factory(target)
    for key, path in files.items():
        data = path.read_bytes()
        if stored.get(key) != hashlib.sha256(data).hexdigest():
            with sessions.begin() as s:
                put_blob(s, key, data)
        kind = key.split("/", 1)[0]
        result.files[kind] = result.files.get(kind, 0) + 1


def _check(source: Engine, target: Engine, tables: list[Table], files: dict[str, Path],
           result: MigrationResult) -> None:
    """Every source row is in the target; every stored file has the source's SHA-256."""
    for table in tables:
        src, dst = set(_pks(source, table)), set(_pks(target, table))
        result.tables[table.name] = {"source": len(src), "target": len(dst)}
        if src - dst:
            result.problems.append(f"{table.name}: {len(src - dst)} row(s) not copied")
    with target.connect() as conn:
        wrong_images = conn.execute(
            select(Base.metadata.tables["images"].c.id)
            .join(Blob, Blob.key == _strip(Base.metadata.tables["images"].c.archive_path))
            .where(Blob.sha256 != Base.metadata.tables["images"].c.sha256)).all()
        reports = Base.metadata.tables["reports"]
        wrong_reports = conn.execute(
            select(reports.c.id).outerjoin(Blob, Blob.key == _strip(reports.c.path))
            .where((Blob.sha256.is_(None)) | (Blob.sha256 != reports.c.sha256))).all()
    if wrong_images:
        result.problems.append(f"images: {len(wrong_images)} archived file(s) with another SHA-256")
    if wrong_reports:
        result.problems.append(f"reports: {len(wrong_reports)} PDF(s) missing or with another SHA-256")
    stored = blob_index(target, "rejected/") | blob_index(target, "outbox/")
    for key, path in files.items():
        if stored.get(key) != hashlib.sha256(path.read_bytes()).hexdigest():
            result.problems.append(f"{key.split('/', 1)[0]}: {path.name} not stored as it is")


def _strip(column):
    from sqlalchemy import func

    return func.substr(column, len("db:") + 1)


def migrate_to(settings: Settings, url: str) -> MigrationResult:
    """Copy the home of ``settings`` into the PostgreSQL database at ``url`` (see the module)."""
    if not url.startswith("postgresql"):
        raise ValueError("migrate-to needs a PostgreSQL URL (postgresql+psycopg://...)")
    upgrade(settings.database_url)  # the source at the schema this code reads
    upgrade(url)
    source, target = make_engine(settings.database_url), make_engine(url)
    result = MigrationResult()
    try:
        tables = _tables(source)
        for table in tables:
            _copy_table(settings, source, target, table, result)
            log.info("copied table %s", table.name)
        files = _folder_files(settings)
        _copy_folder_files(files, target, result)
        result.files["model_store"] = model_sync.publish(settings.model_store_dir, target, every_file=True)
        _check(source, target, tables, files, result)
    finally:
        source.dispose()
        target.dispose()
    return result
