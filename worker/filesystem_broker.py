"""The embedded broker's exchange files, made whole before any process binds a queue.

kombu's filesystem transport keeps each exchange's bindings in
``<control>/<exchange>.exchange``, a JSON list of ``[routing_key, pattern, queue]``. Its
``_queue_bind`` creates a missing file with ``open("wb")`` and only then locks and writes
it, so a second process starting at the same moment reads it empty (``JSONDecodeError``:
the worker dies at start-up), and a truncating create racing a locked update leaves
``Extra data`` behind, which then kills every start.

Once a file exists kombu only opens it ``rb+`` under an exclusive lock and never truncates
it on bind, which is safe. So every process (``worker.celery_app.create_app``) first:

* creates each missing exchange file complete, atomically and without clobbering
  (written aside, then ``os.link``-ed into place: the link fails if another process won);
* repairs a corrupt one under kombu's own exclusive ``flock``: the valid bindings it still
  holds are kept, the queues we need are added back, the rest is dropped (a worker's
  pidbox binding is declared again when that worker starts).

It also polls differently (:class:`Transport`, what ``create_app`` configures): kombu sleeps
a fixed ``polling_interval`` after every empty poll, also while the worker's one prefetched
task runs, so a worker stood idle up to that long between two tasks (at 0.1 s a backlog of
150 images ran at about half the speed its CPU time allows), and a shorter interval burns
CPU in every idle process. It also writes each message whole before it can be read
(:meth:`Channel._put`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem as kombu_filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

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


class Channel(kombu_filesystem.Channel):
    """Writes each message whole before it can be seen, and wakes its transport's poll loop
    when a message is acknowledged or rejected: with prefetch 1 that is the moment the
    worker can take the next message."""

    def _put(self, queue, payload, **kwargs):
        """kombu creates ``<ms>_<uuid>.<queue>.msg`` empty, then locks and writes it, while
        ``_get`` takes a file without the lock: a poll that comes at that moment reads it
        empty and the worker dies (``JSONDecodeError``, the message lost). Written under a
        hidden name that no queue matches, then renamed (atomic) to kombu's own name."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def basic_ack(self, delivery_tag, multiple=False):
        try:
            return super().basic_ack(delivery_tag, multiple=multiple)
        finally:
            self.connection.wake()

    def basic_reject(self, delivery_tag, requeue=False):
        try:
            return super().basic_reject(delivery_tag, requeue=requeue)
        finally:
            self.connection.wake()


class Transport(kombu_filesystem.Transport):
    """kombu's filesystem transport with an adaptive poll. After an empty poll it waits
    ``busy_polling_interval`` (5 ms), doubling at each further empty poll up to
    ``polling_interval``; a message received starts again at the shortest wait. While every
    prefetch slot is taken (the worker's task runs) it polls only every ``polling_interval``
    (remote control), and the acknowledgement that frees a slot (from the pool's result
    thread) wakes it at once. A busy worker takes its next message within a millisecond of
    the last one's end; an idle one polls a few times a second."""

    Channel = Channel
    busy_polling_interval = 0.005

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        busy = client.transport_options.get("busy_polling_interval")
        if busy is not None:
            self.busy_polling_interval = busy
        self._wait = self.busy_polling_interval
        self._woken = threading.Event()

    def _all_slots_taken(self) -> bool:
        """True while every channel with a prefetch limit is at it (none can take a message)."""
        limited = [c for c in self.channels if c.qos.prefetch_count]
        return bool(limited) and not any(c.qos.can_consume() for c in limited)

    def wake(self) -> None:
        """Poll again now (callable from any thread)."""
        self._wait = self.busy_polling_interval
        self._woken.set()

    def drain_events(self, connection, timeout=None):
        start = monotonic()
        get = self.cycle.get
        longest = self.polling_interval or self.busy_polling_interval
        while True:
            self._woken.clear()
            try:
                get(self._deliver, timeout=timeout)
            except Empty:
                elapsed = monotonic() - start
                if timeout is not None and elapsed >= timeout:
                    raise TimeoutError() from None  # socket.timeout, what kombu raises
                if self._all_slots_taken():
                    wait = longest  # the ack that frees a slot wakes us
                else:
                    wait, self._wait = self._wait, min(self._wait * 2, longest)
                if timeout is not None:
                    wait = min(wait, timeout - elapsed)
                self._woken.wait(wait)
            else:
                self._wait = self.busy_polling_interval
                return
