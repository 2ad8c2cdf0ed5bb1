"""The fault suite of issue 9: break the running service as a hospital's environment would,
and end every test with each job done or rejected exactly once.

Harness (this package):

* ``corpus.py``: the bad and odd input corpus (100+ kinds generated in code), each with the
  outcome the service must reach: ``report``, ``rejected:<reason code>`` or ``left alone``.
* ``services.py``: a fresh PostgreSQL database per test, a TCP proxy in front of PostgreSQL
  that can be cut, a private Redis with an append-only file that can be restarted, Celery
  worker and beat subprocesses that can be ``kill -9``-ed (main process or a pool child),
  ``wait_all_final`` and ``check_exactly_once``.
* ``conftest.py``: fixtures over those (``fault_db``, ``private_redis``, ``fault_settings``,
  ``celery_processes``).

Tests here today: ``test_corpus_generation`` (no services: every kind makes what it claims
and the decoder agrees with the content kinds) and ``test_harness_smoke`` (integration: the
harness end to end, five images through a real worker subprocess).

Planned, once the reliability work of issue 9 has landed (each ends with
``wait_all_final`` + ``check_exactly_once``; real Redis, PostgreSQL and Celery workers):

1. ``kill -9`` of a worker's main process mid-task: the job is delivered again within 60 s
   (lease/heartbeat or acknowledging transport) and processed exactly once.
2. ``kill -9`` of a pool child mid-task: the same, and the worker carries on.
3. Redis restarted (SIGTERM and SIGKILL) with its append-only file while jobs are queued
   and running: no job lost, none run twice.
4. PostgreSQL unreachable for 30 s (``TcpProxy.cut_for(30)``) during intake and during
   processing: intake keeps files, workers retry, everything finishes afterwards.
5. The same task message delivered twice (sent twice by hand, and Redis redelivery after
   the visibility timeout): one report, one prediction row.
6. A full disk for reports (simulated: a reports folder whose writes fail with ENOSPC):
   the job is retried or failed with its reason; no orphan PDF, no done job without one.
7. The corpus through the real service (watcher + worker subprocesses): every kind ends as
   ``corpus.KINDS`` says (``corpus.mismatches(...) == {}``), the service never stops, and
   no ``corpus.SENSITIVE_MARKERS`` string appears in logs, ``jobs.error`` or sidecars.
8. Retraining delivered at most once; the reconciler re-sends a stale job at most once per
   stale period.
"""
