"""The one table from errors to exit codes."""

from __future__ import annotations

import sys

import pytest

from faceflow.cli_base import EXIT_CODES, exit_code
from faceflow.errors import (
    ChecksumMismatch,
    ConfigError,
    DatasetError,
    FaceflowError,
    GalleryError,
    ImageError,
    InvalidName,
    MissingExtra,
    ModelMismatch,
    ModelUnavailable,
    MultipleFaces,
    NoFaceFound,
    StoreDamaged,
    StoreUnavailable,
)


@pytest.mark.parametrize(("error", "code"), [
    (NoFaceFound("a.jpg"), 1), (MultipleFaces(3, "a.jpg"), 1), (ImageError("truncated", "a.jpg"), 1),
    (DatasetError("no pairs.txt"), 1), (FaceflowError("other"), 1),
    (ConfigError("unknown detector"), 2), (GalleryError("no gallery named 'x'"), 2), (InvalidName("empty"), 2),
    (MissingExtra("plots", "plots", "matplotlib"), 2),
    (ModelUnavailable("yunet"), 3), (ChecksumMismatch("yunet"), 3),
    (StoreUnavailable("connection refused"), 4), (StoreDamaged("not a database"), 4),
    (ModelMismatch("gallery holds dlib"), 5),
])
def test_exit_codes(error: FaceflowError, code: int) -> None:
    assert exit_code(error) == code


def test_every_error_class_has_a_row_and_subclasses_come_first() -> None:
    classes = [cls for cls, _ in EXIT_CODES]
    for i, cls in enumerate(classes):  # a row after one of its base classes would never be reached
        assert not any(issubclass(cls, earlier) for earlier in classes[:i]), cls
    assert classes[-1] is FaceflowError


@pytest.mark.parametrize(("package", "extra"), [("psycopg", "postgres"), ("usearch", "ann"), ("matplotlib", "plots")])
def test_a_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, package: str, extra: str) -> None:
    from faceflow.extras import require

    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed: import raises ImportError
    message = rf"needs {package}, which is not installed: pip install 'faceflow\[{extra}\]'"
    with pytest.raises(MissingExtra, match=message):
        require(package, "this feature")


def test_postgres_store_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from faceflow.gallery import open_gallery_store

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingExtra, match=r"PostgreSQL gallery backend needs psycopg.*faceflow\[postgres\]"):
        open_gallery_store("postgresql://127.0.0.1:9/none")
