"""The embedded broker never fails to start: kombu's filesystem transport creates an
exchange file empty and writes it afterwards, so processes binding queues at the same
moment used to read it empty (``JSONDecodeError`` in ``_queue_bind``) or leave it
corrupt. ``worker.messaging.filesystem_broker`` makes the files whole first; these tests start
binders concurrently, as ``run`` starts its workers and beat, from fresh broker folders."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest

from worker.messaging.celery_app import QUEUES
from worker.messaging.filesystem_broker import parse_table, prepare_control_folder

PROCESSES = 4
TRIALS = 30


def _bind_like_a_starting_worker(broker: str, name: str, prepare: bool, barrier,
                                 results=None) -> str | None:
    """What a Celery process does at start on the filesystem transport: declare its
    remote-control (pidbox) queue and its queues, each bound to its exchange."""
    from kombu import Connection, Exchange, Queue

    control = Path(broker) / "control"
    try:
        if prepare:
            prepare_control_folder(control, QUEUES)  # what create_app does first
        options = {"data_folder_in": f"{broker}/queue", "data_folder_out": f"{broker}/queue",
                   "control_folder": str(control), "store_processed": False}
        with Connection("filesystem://", transport_options=options) as conn:
            channel = conn.channel()
            pidbox = Queue(f"{name}.celery.pidbox", Exchange("celery.pidbox", type="fanout"),
                           auto_delete=True)
            queues = [Queue(q, Exchange(q), routing_key=q) for q in QUEUES]
            barrier.wait(timeout=30)
            for queue in [pidbox, *queues]:
                queue(channel).declare()
        error = None
    except Exception as exc:  # noqa: BLE001 - the failure is the measurement
        error = f"{type(exc).__name__}: {exc}"
    if results is not None:
        results.put(error)
    return error


def _trials(tmp_path: Path, prepare: bool, trials: int) -> tuple[int, int]:
    """(processes that failed, exchange files left invalid) over ``trials`` fresh starts."""
    ctx = multiprocessing.get_context("forkserver")  # never fork a process that may hold TensorFlow
    ctx.set_forkserver_preload([__name__])  # binders fork with kombu imported: they start together
    failed = corrupt = 0
    for trial in range(trials):
        broker = tmp_path / f"broker-{trial}"
        (broker / "queue").mkdir(parents=True)
        barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
        procs = [ctx.Process(target=_bind_like_a_starting_worker,
                             args=(str(broker), f"p{i}@host", prepare, barrier, results))
                 for i in range(PROCESSES)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(30)
        failed += sum(r is not None for r in outcomes)
        corrupt += sum(parse_table(f.read_bytes()) is None
                       for f in (broker / "control").glob("*.exchange"))
    return failed, corrupt


def test_concurrent_starts_from_fresh_broker_folders_never_fail(tmp_path):
    failed, corrupt = _trials(tmp_path, prepare=True, trials=TRIALS)
    assert (failed, corrupt) == (0, 0), f"{failed} failed starts, {corrupt} corrupt files"


def test_every_binding_survives_concurrent_starts(tmp_path):
    _trials(tmp_path, prepare=True, trials=1)
    control = tmp_path / "broker-0" / "control"
    pidbox = parse_table((control / "celery.pidbox.exchange").read_bytes())
    assert sorted(q for _, _, q in pidbox) == [f"p{i}@host.celery.pidbox" for i in range(PROCESSES)]
    for queue in QUEUES:
        assert parse_table((control / f"{queue}.exchange").read_bytes()) == [[queue, "", queue]]


@pytest.mark.parametrize("content", [b"", b'[["triage", "", "triage"]]]]', b"\x00\x00garbage",
                                     b'{"not": "a table"}'])
def test_a_corrupt_exchange_file_is_repaired_and_start_succeeds(tmp_path, content, caplog, monkeypatch,
                                                                 request):
    # Libraries configured earlier in the session (logging.config, Celery) may have disabled
    # our logger, raised its level or stopped its propagation: listen on the logger itself.
    logger = logging.getLogger("worker.messaging.filesystem_broker")
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    previous_disable, previous_level = logging.root.manager.disable, logger.level
    logging.disable(logging.NOTSET)  # these two calls also clear the loggers' level caches
    logger.setLevel(logging.WARNING)
    request.addfinalizer(lambda: (logger.setLevel(previous_level), logging.disable(previous_disable)))
    broker = tmp_path / "broker"
    (broker / "queue").mkdir(parents=True)
    control = broker / "control"
    control.mkdir()
    (control / "triage.exchange").write_bytes(content)
    (control / "celery.pidbox.exchange").write_bytes(b'[["", "", "old@host.celery.pidbox"]]x')
    repaired = prepare_control_folder(control, QUEUES)
    assert repaired == ["celery.pidbox.exchange", "triage.exchange"]
    assert parse_table((control / "triage.exchange").read_bytes()) == [["triage", "", "triage"]]
    # The valid part of a file with extra data after it is kept.
    assert json.loads((control / "celery.pidbox.exchange").read_text()) == [
        ["", "", "old@host.celery.pidbox"]]
    assert "repaired the corrupt exchange file" in caplog.text
    barrier = multiprocessing.get_context("forkserver").Barrier(1)
    assert _bind_like_a_starting_worker(str(broker), "new@host", True, barrier) is None
    assert prepare_control_folder(control, QUEUES) == []  # whole now: nothing to do


def test_an_existing_table_is_never_replaced(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    table = [["triage", "", "triage"], ["other", "", "triage"]]
    (control / "triage.exchange").write_text(json.dumps(table))
    prepare_control_folder(control, QUEUES)
    assert json.loads((control / "triage.exchange").read_text()) == table


# ---------------------------------------------------------------- the adaptive transport


def _connection(broker: Path, polling_interval: float):
    from kombu import Connection

    from worker.messaging.filesystem_transport import Transport

    (broker / "queue").mkdir(parents=True, exist_ok=True)
    prepare_control_folder(broker / "control", QUEUES)
    options = {"data_folder_in": f"{broker}/queue", "data_folder_out": f"{broker}/queue",
               "control_folder": f"{broker}/control", "store_processed": False,
               "polling_interval": polling_interval, "busy_polling_interval": 0.005}
    return Connection("filesystem://", transport=Transport, transport_options=options)


def _queue():
    from kombu import Exchange, Queue

    return Queue("triage", Exchange("triage"), routing_key="triage")


def test_create_app_uses_the_adaptive_transport_on_the_embedded_broker(tmp_path):
    from worker.messaging.celery_app import create_app
    from worker.messaging.filesystem_transport import Transport
    from worker.settings import Settings

    app = create_app(Settings(home=tmp_path / "home"))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)


def test_a_freed_prefetch_slot_takes_the_next_message_at_once(tmp_path):
    """kombu sleeps ``polling_interval`` (here 2 s) while the one prefetched message is held;
    the acknowledgement (from another thread, as the prefork result handler sends it) must
    bring the next message within milliseconds."""
    import threading
    import time

    with _connection(tmp_path / "broker", polling_interval=2.0) as conn:
        got: list = []
        with conn.Producer() as producer:
            for i in range(2):
                producer.publish({"n": i}, exchange=_queue().exchange, routing_key="triage",
                                 declare=[_queue()], serializer="json")
        with conn.Consumer(_queue(), callbacks=[lambda body, msg: got.append((body, msg))],
                           accept=["json"]) as consumer:
            consumer.qos(prefetch_count=1)
            conn.drain_events(timeout=5)
            assert len(got) == 1  # one slot: the other message waits for the ack
            acked_at: list[float] = []
            timer = threading.Timer(0.3, lambda: (got[0][1].ack(), acked_at.append(time.monotonic())))
            timer.start()
            conn.drain_events(timeout=5)
            received_at = time.monotonic()
            timer.join()
    assert sorted(b["n"] for b, _ in got) == [0, 1]
    assert received_at - acked_at[0] < 0.2, f"{received_at - acked_at[0]:.2f} s after the ack"


def test_an_idle_consumer_backs_off_and_still_receives(tmp_path, monkeypatch):
    """Empty queues: polls thin out to ``polling_interval`` (not one every 5 ms), and a
    message put meanwhile is received within about one interval."""
    import threading
    import time

    from worker.messaging.filesystem_transport import Channel

    polls = []
    original = Channel._get
    monkeypatch.setattr(Channel, "_get", lambda self, queue: (polls.append(queue), original(self, queue))[1])
    with _connection(tmp_path / "broker", polling_interval=0.2) as conn:
        got = []
        with conn.Consumer(_queue(), callbacks=[lambda body, msg: (got.append(body), msg.ack())],
                           accept=["json"]):
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=1.5)
            assert len(polls) < 20, f"{len(polls)} polls in 1.5 s idle"
            put_at = []

            def put() -> None:
                with conn.clone() as other, other.Producer() as producer:
                    put_at.append(time.monotonic())
                    producer.publish({"n": 7}, exchange=_queue().exchange, routing_key="triage",
                                     serializer="json")

            threading.Timer(0.1, put).start()
            conn.drain_events(timeout=5)
            delay = time.monotonic() - put_at[0]
    assert got == [{"n": 7}]
    assert delay < 0.2 + 0.15, f"received {delay:.2f} s after the put"


def test_a_message_is_never_visible_before_it_is_whole(tmp_path, monkeypatch):
    """kombu created the queue file empty and wrote it afterwards; a poll in between read it
    empty and killed the worker (JSONDecodeError). Every file a reader can see under the
    queue's name must hold the whole message."""
    import os

    import worker.messaging.filesystem_broker as fb

    seen = []
    real_rename = os.rename

    def rename(src, dst):
        # At the moment the name appears, the content must already be complete.
        assert not os.path.exists(dst)
        seen.append(json.loads(Path(src).read_bytes()))
        return real_rename(src, dst)

    monkeypatch.setattr(fb.os, "rename", rename)
    broker = tmp_path / "broker"
    with _connection(broker, polling_interval=0.2) as conn, conn.Producer() as producer:
        producer.publish({"n": 1}, exchange=_queue().exchange, routing_key="triage",
                         declare=[_queue()], serializer="json")
    names = os.listdir(broker / "queue")
    assert len(seen) == 1 and [n for n in names if n.endswith(".triage.msg")] == names
    assert json.loads((broker / "queue" / names[0]).read_bytes())["body"]  # kombu's own format
