"""One :class:`~faceflow.gallery.search.Searcher` shared by threads that identify while another enrols."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from faceflow.gallery import GalleryFace, Searcher, open_gallery_store

DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("ann", [False, True], ids=["exact", "usearch"])
def test_shared_searcher_answers_right_while_faces_are_enrolled(tmp_path: Path, ann: bool) -> None:
    rng = np.random.default_rng(7)
    vectors = _unit(rng, 60)
    names = [f"s{i // 2:03d}" for i in range(60)]  # 30 subjects, two faces each
    with open_gallery_store(tmp_path / "g.db") as store:
        store.create_gallery("g", "test@1", DIM)
        ids = store.add_faces("g", [GalleryFace(n, v) for n, v in zip(names, vectors, strict=True)], model="test@1")
        searcher = Searcher(store, "g", ann=ann, threshold=0.5)
        errors: list[str] = []
        stop = time.monotonic() + 3.0

        def query(seed: int) -> None:
            r = np.random.default_rng(seed)
            try:
                while time.monotonic() < stop:
                    i = int(r.integers(60))
                    found, scores = searcher.search_faces(vectors[i], k=1)
                    if found[0, 0] != ids[i] or scores[0, 0] < 0.999:
                        errors.append(f"face {ids[i]}: search_faces gave {found[0, 0]} at {scores[0, 0]:.4f}")
                    (answer,) = searcher.identify(vectors[i], top=3)
                    if answer.subject != names[i] or (answer.similarity or 0.0) < 0.999:
                        errors.append(f"{names[i]}: identify gave {answer.subject} at {answer.similarity}")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        def enrol() -> None:
            r = np.random.default_rng(99)
            try:
                while time.monotonic() < stop:  # new faces of the first subject shift every later row
                    store.add_faces("g", [GalleryFace("s000", v) for v in _unit(r, 3)], model="test@1")
            except Exception as exc:
                errors.append(f"enrol: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=query, args=(s,)) for s in range(4)] + [threading.Thread(target=enrol)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"{len(errors)} wrong answers, e.g. {errors[:3]}"
        assert store.gallery("g").faces > 60  # the enrolling thread did enrol meanwhile
