"""The model a worker process serves: loaded once, and swapped when the store's CURRENT
pointer changes (a promotion or rollback), without a restart.

Serving runs LiteRT (``worker.classify.inference.Classifier``): loading takes ~0.1 s, so a
worker process loads and warms it when it starts (:meth:`ModelCache.warm`), not on its
first image.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker.classify.inference import Classifier
from worker.errors import ModelNotAvailable
from worker.store.versions import ModelStore

log = logging.getLogger(__name__)


class ModelCache:
    """``tf_threads`` (the setting's historic name) is the inference threads per process."""

    def __init__(self, store: ModelStore, tf_threads: int = 1,
                 refresh: Callable[[], None] | None = None) -> None:
        """``refresh``: brings the local store up to date first (database storage: the store
        lives in the database and this folder is its cache, ``worker.storage.model_sync``)."""
        self.store = store
        self.refresh = refresh
        self.threads = tf_threads
        self._lock = threading.Lock()
        self._classifier: Classifier | None = None
        self._shadow: Classifier | None = None

    def get(self, allow_export: bool = True) -> Classifier:
        """The classifier of the current version; reading CURRENT costs one small file read.

        No CURRENT (an operator emptied the pointer): no model, even one loaded before; the
        job waits (``ModelNotAvailable`` is retried) until a version is promoted."""
        if self.refresh is not None:
            self.refresh()
        version = self.store.current_version()
        if version is None:
            raise ModelNotAvailable(f"no current model version in {self.store.root}")
        with self._lock:
            if self._classifier is None or self._classifier.version != version:
                classifier = Classifier.from_store(self.store, version, threads=self.threads,
                                                   allow_export=allow_export)
                classifier.warm_up()
                self._classifier = classifier
                log.info("serving model version %s", classifier.version)
            return self._classifier

    def warm(self) -> bool:
        """Load and warm the current model now (a worker process starting); never converts a
        model (seconds) inside Celery's start-up limit. False, logged, when it cannot: the
        first job then loads it, or retries with the reason."""
        try:
            self.get(allow_export=False)
            return True
        except ModelNotAvailable as exc:
            log.warning("model not loaded at start-up: %s", exc)
            return False

    def get_shadow(self) -> Classifier | None:
        """The shadow candidate's classifier, or None when no candidate runs in shadow."""
        version = self.store.shadow_version()
        serving = self._classifier.version if self._classifier is not None else None
        if version is None or version == serving:  # get() just read CURRENT: no second read
            return None
        with self._lock:
            if self._shadow is None or self._shadow.version != version:
                self._shadow = Classifier.from_store(self.store, version, threads=self.threads)
                self._shadow.warm_up()
                log.info("shadow model version %s", version)
            return self._shadow
