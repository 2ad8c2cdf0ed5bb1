"""Where stored files live (``TRIAGE_STORAGE``): folders under the home, or the database.

Every writer and reader of archived images, report PDFs, rejected inputs, FHIR outbox bundles
and model store files goes through :func:`storage_for` (``worker.storage.backends``); a row
keeps the file's *location*: a path (filesystem) or ``db:<key>`` (database, see
``worker.storage.blobs``), read back with :func:`worker.storage.blobs.read_location`.
"""
