"""The fault harness works end to end today: real PostgreSQL (fresh database), a private
Redis, a Celery worker subprocess, the hospital client."""

from __future__ import annotations

import signal

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from tests.faults.corpus import good_jpeg
from tests.faults.services import (
    TcpProxy,
    check_exactly_once,
    wait_all_final,
    wait_until,
)
from worker.client import TriageClient

pytestmark = pytest.mark.integration


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_five_images_through_a_worker_subprocess(fault_settings, celery_processes):
    worker = celery_processes("worker")
    with TriageClient(fault_settings) as client:
        ids = {client.submit(good_jpeg(600 + i), original_name=f"smoke_{i}.jpg").job_id for i in range(5)}
    assert len(ids) == 5
    counts = wait_all_final(fault_settings.database_url, expected_jobs=5, timeout=300)
    assert counts == {"done": 5}
    assert check_exactly_once(fault_settings.database_url, fault_settings.reports_dir,
                              fault_settings.rejected_dir) == {"done": 5}

    # The harness can kill a pool child; Celery replaces it and the worker goes on.
    killed = worker.kill_pool_child(signal.SIGKILL)
    wait_until(lambda: [c for c in worker.pool_children() if c.pid != killed], 60,
               what="a replacement pool child")
    with TriageClient(fault_settings) as client:
        client.submit(good_jpeg(610), original_name="after_kill.jpg")
    assert wait_all_final(fault_settings.database_url, expected_jobs=6, timeout=120) == {"done": 6}
    check_exactly_once(fault_settings.database_url, fault_settings.reports_dir)


def test_the_proxy_cuts_and_restores_postgres(fault_db):
    with TcpProxy() as proxy:
        via_proxy = _conninfo(proxy.url(fault_db))
        conn = psycopg.connect(via_proxy, connect_timeout=3, autocommit=True)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # the open connection was dropped
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(via_proxy, connect_timeout=3)  # refused while cut
        proxy.restore()
        with psycopg.connect(via_proxy, connect_timeout=3) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
        # A partition: connections are accepted and never answered.
        proxy.cut(refuse=False)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(via_proxy, connect_timeout=2)
        proxy.restore()


def test_the_private_redis_replays_its_append_only_file(private_redis):
    client = redis.Redis.from_url(private_redis.url())
    client.rpush("queued", "a", "b", "c")
    client.close()
    private_redis.restart(signal.SIGKILL)  # no clean shutdown: only the AOF can bring it back
    client = redis.Redis.from_url(private_redis.url())
    assert client.lrange("queued", 0, -1) == [b"a", b"b", b"c"]
    client.close()
    assert private_redis.starts == 2
