"""Queue and task names: the only thing the senders and the Celery layer must share."""

TRIAGE_QUEUE = "triage"
RETRAIN_QUEUE = "retrain"
PROCESS_TASK = "triage.process_image"
RECONCILE_TASK = "triage.reconcile"
RETRAIN_TASK = "triage.retrain"
