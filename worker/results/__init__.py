"""Results sent back to the hospital: DICOM objects for PACS, FHIR for the EHR, a webhook
for urgent results, and the bookkeeping of every delivery (``worker.db.deliveries``).

Entry point: :func:`worker.results.delivery.deliver_results`, called once a job is done.
Nothing here imports Celery or TensorFlow.
"""
