"""Scheduled retraining behind gates, and the ground truth that feeds it.

Modules: ``truth`` (labels that come back from pathology and the metrics they allow),
``locked_set`` (the evaluation set that never moves), ``gates`` (the promotion decision),
``cycle`` (one retraining run end to end), ``training`` (the default challenger trainer),
``cli`` (the commands). Promotion goes through ``worker.store.admin``; the one-run-at-a-time
lease is ``worker.db.lease``. Nothing here imports Celery; ``worker.messaging.tasks`` wraps ``cycle``.
"""
