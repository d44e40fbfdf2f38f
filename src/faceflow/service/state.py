"""What one service process shares between its requests: models, analysers, searchers, stores, limits.

One :class:`~faceflow.models.runtime.Runtime` holds every loaded model; the analysers built for the
requests (the default one, one per stage list and detector asked for, one per gallery model) all use
it, so a model is loaded once per process whatever asks for it. One
:class:`~faceflow.gallery.search.Searcher` per gallery, kept while the gallery lives.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from faceflow.errors import ConfigError
from faceflow.gallery.backends import open_gallery_store
from faceflow.gallery.search import Searcher
from faceflow.gallery.store import GalleryInfo, GalleryStore
from faceflow.gallery.workflows import analyzer_for
from faceflow.models.runtime import Runtime
from faceflow.pipeline import Analyzer
from faceflow.service.keys import KeyStore
from faceflow.service.limits import RateLimiter, WorkPool
from faceflow.service.metrics import Metrics
from faceflow.service.settings import ServeSettings
from faceflow.stage import registry

MAX_ANALYZERS = 32
"""Distinct analysers (stage lists x detectors x models) kept; the least recently used goes first."""


class ServiceState:
    """The shared objects of one process (see the module docstring); :meth:`close` frees them."""

    def __init__(self, settings: ServeSettings, *, keys: KeyStore | None = None,
                 store: GalleryStore | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.keys = keys or KeyStore(settings.resolved_keys_path())
        self.store = store or open_gallery_store(settings.resolved_gallery_url())
        self.runtime = Runtime(threads=None, workers=settings.threads)
        self.pool = WorkPool(settings.threads, settings.queue_size, self.metrics.pool_changed)
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.default_stages = tuple(settings.stages.split(","))
        self._analyzers: OrderedDict[tuple[Any, ...], Analyzer] = OrderedDict()
        self._searchers: dict[tuple[str, int], Searcher] = {}
        self._lock = threading.Lock()
        self._verify_detector: Any = None
        self.auth_failures = RateLimiter(settings.auth_failure_rate, settings.auth_failure_burst)
        """Failed key checks per client address: each costs a scrypt, so a guesser is slowed down."""
        self.ready = False
        self.load_error: str | None = None

    # -- analysers ----------------------------------------------------------------------------------
    def _cached(self, key: tuple[Any, ...], build: Any) -> Analyzer:
        with self._lock:
            found = self._analyzers.get(key)
            if found is not None:
                self._analyzers.move_to_end(key)
                return found
        made: Analyzer = build()
        with self._lock:
            found = self._analyzers.setdefault(key, made)
            self._analyzers.move_to_end(key)
            while len(self._analyzers) > MAX_ANALYZERS:
                self._analyzers.popitem(last=False)
        return found

    def analyzer(self, stages: tuple[str, ...] | None = None, detector: str | None = None,
                 embed_model: str | None = None) -> Analyzer:
        """The analyser for these stages and detector (``embed_model``: the embed stage's model)."""
        stages = stages or self.default_stages
        known = set(registry().names())
        unknown = [s for s in stages if s not in known]
        if unknown:
            raise ConfigError(f"unknown stage {unknown[0]!r}; known: {', '.join(sorted(known))}")
        detector = detector or self.settings.detector
        values: dict[str, Any] = {"detector": detector, "max_pixels": self.settings.max_pixels}
        if embed_model is not None:
            values["embedders"] = (embed_model,)
        key = ("analyze", stages, detector, embed_model)
        return self._cached(key, lambda: Analyzer(stages=stages, runtime=self.runtime, **values))

    def gallery_analyzer(self, info: GalleryInfo) -> Analyzer:
        """The analyser that makes the embeddings of ``info``'s gallery (detect + embed)."""
        meta = info.metadata
        key = ("gallery", info.model, str(meta.get("embedder")), bool(meta.get("flip", False)))

        def build() -> Analyzer:
            analyzer: Analyzer = analyzer_for(info, self.settings.detector, runtime=self.runtime,
                                                max_pixels=self.settings.max_pixels)
            return analyzer

        found = self._cached(key, build)
        return found

    def verify_detector(self) -> Any:
        """The YuNet detector of :func:`~faceflow.recognize.verify_images`, built once (its OpenCV net)."""
        with self._lock:
            if self._verify_detector is None:
                from faceflow.detect import create_detector

                self._verify_detector = create_detector("yunet", runtime=self.runtime)
            return self._verify_detector

    def load_default_models(self) -> None:
        """Build the default analyser and load its models (then ``/readyz`` says ready)."""
        t0 = time.perf_counter()
        try:
            self.analyzer().load_models()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise
        self.metrics.model_load.set(time.perf_counter() - t0)
        self.ready = True

    # -- searchers ----------------------------------------------------------------------------------
    def searcher(self, info: GalleryInfo) -> Searcher:
        """The one searcher of this gallery (a gallery deleted and made again gets a new one)."""
        key = (info.name, info.id)
        with self._lock:
            found = self._searchers.get(key)
            if found is None:
                for old in [k for k in self._searchers if k[0] == info.name]:
                    del self._searchers[old]
                found = self._searchers[key] = Searcher(self.store, info.name)
            return found

    def forget_gallery(self, name: str) -> None:
        with self._lock:
            for old in [k for k in self._searchers if k[0] == name]:
                del self._searchers[old]

    def close(self) -> None:
        """Finish accepted work, then close the models and the stores."""
        self.pool.shutdown()
        with self._lock:
            self._analyzers.clear()
            self._searchers.clear()
        self.runtime.close()
        self.store.close()
        self.keys.close()
