"""The blobs table (``worker.db.models.Blob``): stored files keyed by name, shared by hosts.

A location is what a row keeps to find its file: a file path (filesystem storage) or
``db:<key>`` (database storage). :func:`read_location` reads either, so a reader never needs
to know which storage wrote it (a home migrated from SQLite keeps both kinds for a while).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from worker.db.models import Blob, utcnow

DB_PREFIX = "db:"


def is_db_location(location: str | Path | None) -> bool:
    return isinstance(location, str) and location.startswith(DB_PREFIX)


def db_location(key: str) -> str:
    return DB_PREFIX + key


def key_of(location: str) -> str:
    return location[len(DB_PREFIX):]


def _insert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(Blob)


def put_blob(session: Session, key: str, data: bytes, *, replace: bool = True) -> str:
    """Insert (or replace) ``key`` inside the caller's transaction; returns its sha256.
    ``replace=False``: content-addressed keys, where an existing row already holds the bytes."""
    sha = hashlib.sha256(data).hexdigest()
    row = dict(key=key, data=data, sha256=sha, size_bytes=len(data), created_at=utcnow())
    stmt = _insert(session).values(**row)
    if replace:
        stmt = stmt.on_conflict_do_update(index_elements=["key"], set_=dict(
            data=stmt.excluded.data, sha256=stmt.excluded.sha256,
            size_bytes=stmt.excluded.size_bytes, created_at=stmt.excluded.created_at))
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=["key"])
    session.execute(stmt)
    return sha


def get_blob(bind: Engine | Session, key: str) -> bytes | None:
    query = select(Blob.data).where(Blob.key == key)
    if isinstance(bind, Session):
        return bind.execute(query).scalar_one_or_none()
    with bind.connect() as conn:
        return conn.execute(query).scalar_one_or_none()


def blob_index(bind: Engine | Session, prefix: str) -> dict[str, str]:
    """key -> sha256 of every blob whose key starts with ``prefix`` (no data read)."""
    query = select(Blob.key, Blob.sha256).where(Blob.key.startswith(prefix, autoescape=True))
    if isinstance(bind, Session):
        return {k: v for k, v in bind.execute(query)}
    with bind.connect() as conn:
        return {k: v for k, v in conn.execute(query)}


def delete_blob(session: Session, key: str) -> bool:
    return session.execute(delete(Blob).where(Blob.key == key)).rowcount > 0


def read_location(location: str | Path, bind: Engine | Session | None) -> bytes:
    """The bytes at ``location``; FileNotFoundError when they are not there."""
    if is_db_location(location):
        if bind is None:
            raise FileNotFoundError(f"{location} needs the database to be read")
        data = get_blob(bind, key_of(location))
        if data is None:
            raise FileNotFoundError(location)
        return data
    return Path(location).read_bytes()


def location_exists(location: str | Path, bind: Engine | Session | None) -> bool:
    if is_db_location(location):
        return bind is not None and bool(blob_index(bind, key_of(location)).get(key_of(location)))
    return Path(location).exists()


class StoredFile:
    """A stored file by its location, read like a path (``read_bytes``, ``exists``, ``name``)."""

    def __init__(self, location: str | Path, bind: Engine | None = None) -> None:
        self.location = str(location)
        self.bind = bind

    @property
    def name(self) -> str:
        return Path(key_of(self.location) if is_db_location(self.location) else self.location).name

    def read_bytes(self) -> bytes:
        return read_location(self.location, self.bind)

    def exists(self) -> bool:
        return location_exists(self.location, self.bind)

    def __fspath__(self) -> str:
        if is_db_location(self.location):
            raise TypeError(f"{self.location} is kept in the database, not in a file")
        return self.location

    def __str__(self) -> str:
        return self.location

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(self.location)
