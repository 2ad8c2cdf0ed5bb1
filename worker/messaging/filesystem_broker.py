"""The embedded broker's exchange files, made whole before any process binds a queue.

kombu's filesystem transport keeps each exchange's bindings in
``<control>/<exchange>.exchange``, a JSON list of ``[routing_key, pattern, queue]``. Its
``_queue_bind`` creates a missing file with ``open("wb")`` and only then locks and writes
it, so a second process starting at the same moment reads it empty (``JSONDecodeError``:
the worker dies at start-up), and a truncating create racing a locked update leaves
``Extra data`` behind, which then kills every start.

Once a file exists kombu only opens it ``rb+`` under an exclusive lock and never truncates
it on bind, which is safe. So every process (``worker.messaging.celery_app.create_app``) first:

* creates each missing exchange file complete, atomically and without clobbering
  (written aside, then ``os.link``-ed into place: the link fails if another process won);
* repairs a corrupt one under kombu's own exclusive ``flock``: the valid bindings it still
  holds are kept, the queues we need are added back, the rest is dropped (a worker's
  pidbox binding is declared again when that worker starts).

How the embedded broker polls and writes messages is ``worker.messaging.filesystem_transport`` (the
Celery layer); this module imports neither Celery nor kombu, so the supervisor can prepare
the folder before it starts any child.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

#: Exchanges Celery itself binds: remote control (pidbox) and its replies, and events.
CELERY_EXCHANGES = ("celery.pidbox", "reply.celery.pidbox", "celeryev")
SUFFIX = ".exchange"

Binding = list[str]


def prepare_control_folder(control: Path, queues: Iterable[str]) -> list[str]:
    """Make every exchange file present and valid; returns the names of those repaired."""
    control = Path(control)
    control.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, list[Binding]] = {q: [[q, "", q]] for q in queues}
    wanted.update({name: [] for name in CELERY_EXCHANGES})
    for exchange, bindings in wanted.items():
        _create_if_missing(control / f"{exchange}{SUFFIX}", bindings)
    repaired = []
    for path in sorted(control.glob(f"*{SUFFIX}")):
        if _repair_if_corrupt(path, wanted.get(path.name[: -len(SUFFIX)], [])):
            repaired.append(path.name)
    return repaired


def _valid_table(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(b, list) and len(b) == 3 and all(isinstance(x, str) for x in b) for b in value)


def parse_table(raw: bytes) -> list[Binding] | None:
    """The bindings in ``raw``, or None when it is not a valid exchange table."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if _valid_table(value) else None


def _salvage(raw: bytes) -> list[Binding]:
    """The valid table a corrupt file starts with (``Extra data`` after it), else nothing."""
    try:
        value, _end = json.JSONDecoder().raw_decode(raw.decode("utf-8", errors="replace").lstrip())
    except ValueError:
        return []
    return value if _valid_table(value) else []


def _create_if_missing(path: Path, bindings: list[Binding]) -> None:
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # No fsync: a file a power cut leaves empty is repaired at the next start.
        tmp.write_bytes(json.dumps(bindings).encode())
        try:
            os.link(tmp, path)  # atomic, and never replaces a file another process made
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _repair_if_corrupt(path: Path, required: list[Binding]) -> bool:
    try:
        f = open(path, "rb+", buffering=0)
    except FileNotFoundError:
        return False
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        raw = f.read()
        if parse_table(raw) is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # the lock kombu's writers take
        try:
            f.seek(0)
            raw = f.read()
            if parse_table(raw) is not None:
                return False  # another process repaired it meanwhile
            table = _salvage(raw)
            table += [b for b in required if b not in table]
            f.seek(0)
            f.write(json.dumps(table).encode())
            f.truncate()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    log.warning("embedded broker: repaired the corrupt exchange file %s (%d binding(s) kept)",
                path.name, len(table))
    return True
