"""Shared fixtures: the evaluation data (skipped with a message when absent) and sample photos."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    """``FACEFLOW_DATASETS``, or ``../shared/datasets`` beside the repository."""
    env = os.environ.get("FACEFLOW_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets() -> Path:
    root = datasets_root()
    if not root.is_dir():
        pytest.skip(f"evaluation data not found at {root} (set FACEFLOW_DATASETS)")
    return root


@pytest.fixture(scope="session")
def dataset(datasets: Path):  # type: ignore[no-untyped-def]
    """``dataset("lfw")`` -> path, skipping the test when that part of the data is absent."""

    def get(*parts: str) -> Path:
        p = datasets.joinpath(*parts)
        if not p.exists():
            pytest.skip(f"{p} is absent")
        return p

    return get


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins): one frontal face, RGB 512x512."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


ASTRONAUT_FACE_BOX = (176.0, 60.0, 270.0, 180.0)
"""Box around the astronaut's face (forehead to chin, cheek to cheek), x1, y1, x2, y2: measured on a
4x zoom with a 10 px grid (chin at y 180, cheeks at x 178 and 268); YuNet's and CenterFace's boxes
overlap it with IoU 0.92 and 0.93. The first hand-measured box, (170, 50, 282, 188), took in hair
above, the neck below and hair at the sides (IoU 0.66 with YuNet's box)."""


# Property-based tests explore new examples on a developer's machine; in CI (CI=true) they replay a
# fixed, derandomised set, so a submission's result does not depend on the draw.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    _hypothesis_settings.load_profile("ci")


# -- a PostgreSQL server for the gallery tests ---------------------------------------------------------

_PG: dict[str, str] = {}


def postgres_admin_url() -> str:
    """``FACEFLOW_TEST_POSTGRES`` or a throw-away server started once per session
    (:func:`faceflow.gallery.tempdb.temporary_postgres`); ``pytest.skip`` saying why when there is none."""
    from faceflow.errors import GalleryError
    from faceflow.gallery.tempdb import temporary_postgres

    if not _PG:
        try:
            _PG["url"] = os.environ.get("FACEFLOW_TEST_POSTGRES") or temporary_postgres()
        except GalleryError as exc:
            _PG["reason"] = str(exc)
    if "url" not in _PG:
        pytest.skip(_PG["reason"])
    return _PG["url"]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    import psycopg

    from faceflow.gallery.tempdb import with_database

    admin = postgres_admin_url()
    name = f"faceflow_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(admin, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_url_as(url: str, user: str, password: str = "") -> str:
    """``url`` logging in as ``user`` (with ``password``, if any) instead."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    login = f"{user}:{password}" if password else user
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.netloc.rpartition('@')[2]}"))
