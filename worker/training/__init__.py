"""Training side of melanoma-triage: data manifest, checks, split, cache, network, calibration.

Nothing here is imported by the Celery workers; TensorFlow is imported only where a
function needs it.
"""
