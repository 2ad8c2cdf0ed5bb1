"""The model store under ``TRIAGE_STORAGE=database``: blobs ``model_store/<path>`` hold every
file of the store; each host's ``model_store_dir`` is a local cache of them.

:func:`publish` sends what changed in the local folder (after a command that adds a version,
promotes, rolls back or calibrates, and after a retraining run); :func:`pull` brings a
host's cache up to date (at start, and from a worker's model cache every few seconds, so a
promotion on one host reaches the workers of every host). Version files are written before
the CURRENT and SHADOW pointers, so a cache never points at a version it lacks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from worker.db.engine import make_session_factory
from worker.durable import write_atomic
from worker.settings import Settings
from worker.storage.blobs import blob_index, get_blob, put_blob
from worker.store.version_files import file_sha256

log = logging.getLogger(__name__)

PREFIX = "model_store/"
POINTERS = ("CURRENT", "SHADOW")
REFRESH_EVERY_S = 5.0


def _local_files(root: Path) -> dict[str, Path]:
    """Relative name -> path of every file a store holds (not staging: dot names)."""
    if not root.is_dir():
        return {}
    files = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = path
    return files


MANIFEST = ".synced.json"  # rel name -> sha256 as last fetched or published (a dot name: not stored)


def _manifest(root: Path) -> dict[str, str]:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _save_manifest(root: Path, manifest: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / MANIFEST, json.dumps(manifest, sort_keys=True).encode())


def publish(root: Path, engine: Engine, *, every_file: bool = False) -> int:
    """Store every file changed here since it was last fetched or published (a stale cache
    never overwrites what another host published); pointers last, in one transaction with
    the rest. ``every_file``: whatever this database lacks (``db migrate-to``: a new database).
    Returns how many files were sent."""
    stored, manifest = blob_index(engine, PREFIX), _manifest(root)
    changed = {}
    for rel, path in _local_files(root).items():
        sha = file_sha256(path)
        if (every_file or manifest.get(rel) != sha) and stored.get(PREFIX + rel) != sha:
            changed[rel] = (path, sha)
    ordered = sorted(changed, key=lambda rel: rel in POINTERS)
    if ordered:
        with make_session_factory(engine).begin() as s:
            for rel in ordered:
                put_blob(s, PREFIX + rel, changed[rel][0].read_bytes())
        manifest.update({rel: changed[rel][1] for rel in ordered})
        _save_manifest(root, manifest)
        log.info("model store: %d file(s) published to the database", len(ordered))
    return len(ordered)


def pull(root: Path, engine: Engine) -> int:
    """Write every stored file the local cache lacks or holds different; returns how many."""
    stored, manifest = blob_index(engine, PREFIX), _manifest(root)
    local = _local_files(root)
    wanted = []
    for key, sha in stored.items():
        rel = key[len(PREFIX):]
        if manifest.get(rel) == sha and rel in local:
            continue  # fetched (or published) as it is: not hashed again
        if rel not in local or file_sha256(local[rel]) != sha:
            wanted.append(key)
        manifest[rel] = sha
    for key in sorted(wanted, key=lambda k: k[len(PREFIX):] in POINTERS):
        data = get_blob(engine, key)
        if data is None:  # removed meanwhile
            continue
        target = root / key[len(PREFIX):]
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
    if stored:
        _save_manifest(root, manifest)
    if wanted:
        log.info("model store: %d file(s) fetched from the database", len(wanted))
    return len(wanted)


def model_refresher(settings: Settings, engine: Engine) -> Callable[[], None] | None:
    """For a worker's model cache: pull at most every few seconds (None on filesystem storage).
    Cheap when nothing changed: the pointers' hashes are compared, and files are hashed only
    when one differs."""
    if settings.storage != "database":
        return None
    root = settings.model_store_dir
    state = {"at": 0.0, "pointers": None}
    lock = threading.Lock()

    def refresh() -> None:
        with lock:
            now = time.monotonic()
            if now - state["at"] < REFRESH_EVERY_S:
                return
            state["at"] = now
            try:
                pointers = {k: v for k, v in blob_index(engine, PREFIX).items()
                            if k[len(PREFIX):] in POINTERS}
                if pointers != state["pointers"]:
                    pull(root, engine)
                    state["pointers"] = pointers
            except Exception as exc:  # the database away: serve the cached model meanwhile
                log.warning("model store not refreshed from the database (%s)", type(exc).__name__)

    return refresh


def has_shared_store(engine: Engine) -> bool:
    """Whether a host has published a model store (its CURRENT pointer) to the database."""
    return bool(blob_index(engine, PREFIX + "CURRENT"))


def sync_home(settings: Settings, engine: Engine) -> None:
    """At start-up of a host on database storage: a store the database does not hold yet
    (the first host, seeded with the shipped models) is published; then the cache is pulled."""
    if settings.storage != "database":
        return
    if not blob_index(engine, PREFIX + "CURRENT"):
        publish(settings.model_store_dir, engine)
    pull(settings.model_store_dir, engine)
