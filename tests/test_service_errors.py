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


def test_a_search_error_keeps_its_type_for_the_service(tmp_path: Path) -> None:
    """identify_result records a search error as text for the CLI's batch; with strict (the service) it is
    raised as it came, so a face without the gallery's embedding is 409 conflict, not a 422 re-wrapped."""
    from faceflow.errors import ModelMismatch
    from faceflow.gallery import Searcher
    from faceflow.gallery.workflows import identify_result
    from faceflow.types import Face, ImageResult

    result = ImageResult("probe.jpg", 10, 10, [Face(box=[0, 0, 5, 5])])  # no embedding at all
    with open_gallery_store(tmp_path / "g.db") as store:
        store.create_gallery("staff", "sface", 128)
        searcher = Searcher(store, "staff")
        lenient = identify_result(searcher, result)
        with pytest.raises(ModelMismatch) as caught:
            identify_result(searcher, result, strict=True)
    assert lenient.error and "no sface embedding" in lenient.error
    answer = from_library(caught.value)
    assert (answer.status, answer.code) == (409, "conflict")
