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
