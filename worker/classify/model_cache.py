"""The model a worker process serves: loaded lazily, once, and swapped when the store's
CURRENT pointer changes (a promotion or rollback), without a restart."""

from __future__ import annotations

import logging
import threading

from worker.store.versions import ModelStore

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, store: ModelStore, tf_threads: int = 1) -> None:
        self.store = store
        self.tf_threads = tf_threads
        self._lock = threading.Lock()
        self._classifier = None
        self._shadow = None

    def get(self):
        """The classifier of the current version; reading CURRENT costs one small file read."""
        from worker.classify.inference import Classifier, configure_tensorflow

        version = self.store.current_version()
        with self._lock:
            if self._classifier is None or (version and self._classifier.version != version):
                configure_tensorflow(self.tf_threads)
                self._classifier = Classifier.from_store(self.store, version)
                log.info("serving model version %s", self._classifier.version)
            return self._classifier

    def get_shadow(self):
        """The shadow candidate's classifier, or None when no candidate runs in shadow."""
        from worker.classify.inference import Classifier

        version = self.store.shadow_version()
        serving = self._classifier.version if self._classifier is not None else None
        if version is None or version == serving:  # get() just read CURRENT: no second read
            return None
        with self._lock:
            if self._shadow is None or self._shadow.version != version:
                self._shadow = Classifier.from_store(self.store, version)
                log.info("shadow model version %s", version)
            return self._shadow
