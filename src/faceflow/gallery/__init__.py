"""Galleries: enrol faces of known people, identify faces (1:N, open-set), cluster photo libraries.

>>> from faceflow.gallery import open_gallery_store, Searcher          # doctest: +SKIP
>>> from faceflow.gallery.service import analyzer_for
>>> store = open_gallery_store()                  # $FACEFLOW_HOME/galleries.db, or a URL
>>> analyzer = analyzer_for(store.gallery("staff"))   # the model the gallery was made with
>>> face = analyzer.analyze("visitor.jpg")[0]
>>> Searcher(store, "staff").identify(face.embeddings[analyzer.options.embedders[0]])[0].subject

A gallery holds the embeddings of one model (by default ``fused``: see
:data:`faceflow.gallery.service.DEFAULT_GALLERY_MODEL`); ``faceflow.gallery.service`` has the
enrol / identify / cluster workflows that the CLI runs.
"""

from faceflow.gallery.search import Candidate, Identification, Searcher, calibrate_threshold
from faceflow.gallery.store import (
    GalleryFace,
    GalleryInfo,
    GalleryStore,
    Subject,
    VectorSet,
    default_gallery_url,
    model_id,
    open_gallery_store,
)

__all__ = [
    "Candidate",
    "GalleryFace",
    "GalleryInfo",
    "GalleryStore",
    "Identification",
    "Searcher",
    "Subject",
    "VectorSet",
    "calibrate_threshold",
    "default_gallery_url",
    "model_id",
    "open_gallery_store",
]
