"""Network doors: the DICOM C-STORE receiver and the HTTP API.

Each door only translates its protocol; images enter through the same admission as the
intake folder (``worker.intake.admission.Intake``), so every image still ends as a
report or a recorded rejection.
"""
