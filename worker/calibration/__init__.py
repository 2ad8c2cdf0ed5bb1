"""Site calibration (issue 12, item 4): thresholds for one hospital from its own confirmed
cases, as a new model version with the same weights.

Modules: ``thresholds`` (the operating point, out-of-bag estimates and bootstrap intervals;
pure numpy), ``site`` (the site's cases from the database, the proposal, the promotion gate
and the new version folder) and ``cli`` (``melanoma-triage calibrate``). Not to be confused
with ``worker.training.calibration``: temperature scaling when a model is trained.
"""
