"""Site calibration (issue 12, item 4; issue 23): a site version from one hospital's own
confirmed cases, with the same weights.

Modules: ``thresholds`` (operating points, out-of-bag estimates and intervals; pure numpy),
``recalibrate`` (the melanoma probability recalibrated on the site's cases, judged out of
bag; the workers apply it through ``worker.classify.recalibration``), ``site`` (the site's
cases from the database, the proposal, the promotion gate and the new version folder),
``site_reference`` (the shift monitor's reference in the site version's probabilities),
``proposal_text`` (the terminal lines, the operating-point table, the model card) and
``cli`` (``melanoma-triage calibrate``). Not to be confused with
``worker.training.calibration``: temperature scaling when a model is trained.
"""
