"""The embedded broker never fails to start: kombu's filesystem transport creates an
exchange file empty and writes it afterwards, so processes binding queues at the same
moment used to read it empty (``JSONDecodeError`` in ``_queue_bind``) or leave it
corrupt. ``worker.filesystem_broker`` makes the files whole first; these tests start
binders concurrently, as ``run`` starts its workers and beat, from fresh broker folders."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest

from worker.celery_app import QUEUES
from worker.filesystem_broker import parse_table, prepare_control_folder

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
    logger = logging.getLogger("worker.filesystem_broker")
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
