"""The embedded broker's transport: kombu's filesystem transport, polling and writing better.

kombu sleeps a fixed ``polling_interval`` after every empty poll, also while the worker's one
prefetched task runs, so a worker stood idle up to that long between two tasks (at 0.1 s a
backlog of 150 images ran at about half the speed its CPU time allows), and a shorter
interval burns CPU in every idle process: :class:`Transport` polls adaptively and is woken by
the acknowledgement that frees its prefetch slot. kombu also creates a message file empty and
writes it afterwards while readers take files without a lock: :meth:`Channel._put` writes
each message whole before it can be read. ``worker.messaging.celery_app.create_app`` configures it for
the embedded broker only (Redis is unchanged).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem as kombu_filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


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
