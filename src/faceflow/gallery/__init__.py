"""Galleries: enrol faces of known people, identify faces (1:N, open-set), cluster photo libraries."""

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
    "GalleryFace",
    "GalleryInfo",
    "GalleryStore",
    "Subject",
    "VectorSet",
    "default_gallery_url",
    "model_id",
    "open_gallery_store",
]
