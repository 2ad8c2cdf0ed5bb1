"""Training side of melanoma-triage, one concern per module:

* data: ``manifest`` (one row per image file, every layout), ``datachecks`` (duplicates,
  conflicts, resolution), ``split`` (leak-free train/val/test), ``dataset`` (decoded-image
  cache, partial-label targets, tf.data);
* model: ``network`` and ``efficientnet_lite`` (backbones, loss), ``config`` (``TrainConfig``: a run and
  its defaults), ``train`` (one run, from folders or a resolved manifest), ``calibration``
  (temperature and operating points);
* reporting: ``metrics`` (every number), ``figures``, ``evaluation_report`` (the PDF),
  ``evaluation`` (runs them, writes the files), ``model_card``, ``describe`` (data plots).

Batched inference lives with serving (``worker.classify.inference``). Nothing here is
imported by the Celery workers; TensorFlow is imported only where a function needs it.
"""
