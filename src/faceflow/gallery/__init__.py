"""Galleries: enrol faces of known people, identify faces (1:N, open-set), cluster photo libraries.

>>> from faceflow.gallery import open_gallery_store, Searcher          # doctest: +SKIP
>>> from faceflow.gallery.workflows import analyzer_for
>>> store = open_gallery_store()                  # $FACEFLOW_HOME/galleries.db, or a URL
>>> analyzer = analyzer_for(store.gallery("staff"))   # the model the gallery was made with
>>> face = analyzer.analyze("visitor.jpg")[0]
>>> Searcher(store, "staff").identify(face.embeddings[analyzer.options.embedders[0]])[0].subject

Modules: :mod:`~faceflow.gallery.store` (the storage API; backends :mod:`~faceflow.gallery.sqlite`
and :mod:`~faceflow.gallery.postgres`, opened by :mod:`~faceflow.gallery.backends`),
:mod:`~faceflow.gallery.search` (1:N search), :mod:`~faceflow.gallery.workflows` (enrol, identify,
re-embed photos, with typed reports; a gallery holds one model's embeddings, by default ``fused``),
:mod:`~faceflow.gallery.folders` (cluster a photo folder) with its HTML
:mod:`~faceflow.gallery.contact_sheet`, :mod:`~faceflow.gallery.io` (export / import).
"""

from faceflow.gallery.backends import default_gallery_url, open_gallery_store
from faceflow.gallery.search import Candidate, Identification, Searcher, calibrate_threshold
from faceflow.gallery.store import (
    GalleryFace,
    GalleryInfo,
    GalleryStore,
    Subject,
    VectorSet,
    check_name,
    model_id,
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
    "check_name",
    "default_gallery_url",
    "model_id",
    "open_gallery_store",
]
