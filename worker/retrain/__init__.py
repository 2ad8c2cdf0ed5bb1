"""Model lifecycle after deployment: the model store's administration (promote, rollback),
ground truth that comes back from pathology, and scheduled retraining behind gates.

Modules: ``admin`` (store changes with their database record), ``truth`` (labels and the
metrics they allow), ``lock`` (a database lease, one retraining at a time across machines),
``locked_set`` (the evaluation set that never moves), ``gates`` (the promotion decision),
``cycle`` (one retraining run end to end), ``training`` (the default challenger trainer),
``cli`` (the commands). Nothing here imports Celery; ``worker.tasks`` wraps ``cycle``.
"""
