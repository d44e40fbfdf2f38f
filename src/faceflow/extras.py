"""Optional parts of faceflow and the pip extras that install them.

``pip install 'faceflow[postgres]'`` (psycopg: PostgreSQL galleries), ``[ann]`` (usearch: the HNSW
index of big SQLite galleries), ``[plots]`` (matplotlib: evaluation plots), ``[serve]`` (FastAPI, uvicorn:
``faceflow serve``), ``[ray]`` (Ray Data and pyarrow: ``--engine ray``, Parquet results), ``[all]`` for
all of them.
Code that needs one imports it through :func:`require`, late, so that ``import faceflow`` and
``faceflow --help`` never load them, and a missing one is a clear :class:`~faceflow.errors.MissingExtra`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from faceflow.errors import MissingExtra

EXTRAS: dict[str, tuple[str, str]] = {
    "psycopg": ("postgres", "psycopg"),
    "usearch": ("ann", "usearch"),
    "matplotlib": ("plots", "matplotlib"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "pydantic_settings": ("serve", "pydantic-settings"),
    "prometheus_client": ("serve", "prometheus-client"),
    "python_multipart": ("serve", "python-multipart"),
    "swagger_ui_bundle": ("serve", "swagger-ui-bundle"),
    "ray": ("ray", "ray[data]"),
    "pyarrow": ("ray", "pyarrow"),
}
"""Top-level package -> (pip extra, what to call it in the message)."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``"usearch.index"``); :class:`MissingExtra` naming the extra if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".", 1)[0]
        if exc.name is not None and exc.name.split(".", 1)[0] != top:
            raise  # the package is there but broken inside: not a missing extra
        extra, package = EXTRAS.get(top, ("all", top))
        raise MissingExtra(feature, extra, package) from exc
