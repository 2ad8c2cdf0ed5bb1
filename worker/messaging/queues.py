"""Queue and task names: the only thing the senders and the Celery layer must share."""

TRIAGE_QUEUE = "triage"
RETRAIN_QUEUE = "retrain"
#: Results to PACS, FHIR and webhooks: a delivery waits through retries (minutes when a
#: PACS is down), so it has its own queue and worker and never holds up triage.
DELIVER_QUEUE = "deliver"
#: The reconciler's pass (beat, every few seconds): triage workers consume it beside
#: "triage", so it never waits behind a backlog of images; its messages expire.
MAINTENANCE_QUEUE = "maintenance"
PROCESS_TASK = "triage.process_image"
RECONCILE_TASK = "triage.reconcile"
RETRAIN_TASK = "triage.retrain"
DELIVER_TASK = "triage.deliver"
REDELIVER_TASK = "triage.redeliver"
#: Retention (``TRIAGE_RETENTION_DAYS``, ``worker.retention.purge``): hourly, on maintenance.
RETENTION_TASK = "triage.retention"
RETENTION_EVERY_S = 3600.0
#: Liveness probes (``worker.process.liveness``): a no-op task on a queue of each worker
#: role's own, so the answer proves that this role's worker takes and runs tasks.
PROBE_TASK = "triage.probe"
#: Beat's own liveness: a tick every reconcile period, recorded by the maintenance worker.
BEAT_TICK_TASK = "triage.beat_tick"


def probe_queue(role: str) -> str:
    """The queue only ``role``'s worker consumes probes from (``probe.triage`` ...)."""
    return f"probe.{role}"
