"""Galleries: enrol faces of known people, identify faces (1:N, open-set), cluster photo libraries.

>>> from faceflow.gallery import open_gallery_store, Searcher          # doctest: +SKIP
>>> store = open_gallery_store()                  # $FACEFLOW_HOME/galleries.db, or a URL
>>> Searcher(store, "staff").identify(face.embeddings["sface"])[0].subject   # doctest: +SKIP
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
