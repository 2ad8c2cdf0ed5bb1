"""Watching a deployed model without labels (issue 12, item 5).

Modules: ``reference`` (what the model's outputs and the images looked like on validation
data, stored as ``reference.json`` with a model version), ``shift`` (live traffic from the
predictions table compared with it: population stability index, rates, warnings) and ``cli``
(``melanoma-triage monitor reference|shift``). Nothing here imports TensorFlow at module
level; only computing a reference loads the model.
"""
