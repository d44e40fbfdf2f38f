"""Open a gallery store by URL or path: the one place that knows every backend.

Kept apart from :mod:`faceflow.gallery.store` so that the backends, which subclass its
:class:`~faceflow.gallery.store.GalleryStore`, are imported by this module and never import it back.
"""

from __future__ import annotations

import os

from faceflow.gallery.postgres import PostgresStore
from faceflow.gallery.sqlite import SQLiteStore
from faceflow.gallery.store import GalleryStore
from faceflow.models.store import faceflow_home

GALLERY_URL_ENV = "FACEFLOW_GALLERY"
"""Environment variable naming the default store (URL or path) instead of ``$FACEFLOW_HOME/galleries.db``."""


def default_gallery_url() -> str:
    """``$FACEFLOW_GALLERY`` or the SQLite file ``$FACEFLOW_HOME/galleries.db``."""
    return os.environ.get(GALLERY_URL_ENV) or str(faceflow_home() / "galleries.db")


def open_gallery_store(url: str | os.PathLike[str] | None = None) -> GalleryStore:
    """Open (creating and migrating as needed) the store at ``url``.

    ``postgresql://user@host/db`` (or ``postgres://``) -> PostgreSQL with pgvector;
    ``sqlite:///relative.db``, ``sqlite:////absolute/path.db`` (as SQLAlchemy), ``sqlite:///:memory:``
    or a plain path -> SQLite;
    ``None`` -> :func:`default_gallery_url`.
    """
    text = str(url) if url is not None else default_gallery_url()
    if text.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return PostgresStore(text.replace("postgresql+psycopg://", "postgresql://", 1))
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]  # as SQLAlchemy: sqlite:///rel.db, sqlite:////abs/path.db
    return SQLiteStore(text)
