"""The one table from library errors to HTTP answers (:mod:`faceflow.service.errors`): by type, never by
the wording of a message, and never naming other galleries."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceflow.errors import AlreadyExists, GalleryError, NotFound
from faceflow.gallery import open_gallery_store
from faceflow.service.errors import from_library


def test_store_lookups_map_to_404_and_409_by_type(tmp_path: Path) -> None:
    with open_gallery_store(tmp_path / "g.db") as store:
        store.create_gallery("staff", "sface", 128)
        store.create_gallery("secret-project", "sface", 128)
        store.add_subject("staff", "Ada")
        raised = []
        for call in (lambda: store.gallery("nope"), lambda: store.subject("staff", "Bob"),
                     lambda: store.create_gallery("staff", "sface", 128), lambda: store.add_subject("staff", "Ada")):
            with pytest.raises(GalleryError) as caught:
                call()
            raised.append(caught.value)
    assert [type(e) for e in raised] == [NotFound, NotFound, AlreadyExists, AlreadyExists]
    answers = [from_library(e) for e in raised]
    assert [(a.status, a.code) for a in answers] == [(404, "not_found")] * 2 + [(409, "conflict")] * 2
    assert "secret-project" in str(raised[0]) and "secret-project" not in answers[0].message


def test_other_gallery_refusals_are_not_guessed_from_their_wording() -> None:
    """A message that happens to start with "no " or mention "already exists" is not a 404 or 409."""
    for text in ("no PostgreSQL server could be started: initdb missing", "embedding is zero; already exists"):
        answer = from_library(GalleryError(text))
        assert (answer.status, answer.code) == (422, "unprocessable")
