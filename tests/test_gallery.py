"""The gallery store and its search, run against SQLite and a real PostgreSQL + pgvector server.

The PostgreSQL server is started once per session: from ``FACEFLOW_TEST_POSTGRES`` (a URL to an
administrator connection) if set, else by :func:`faceflow.gallery.tempdb.temporary_postgres` (the
``pgserver`` package, else Debian's ``postgresql-NN`` + ``postgresql-NN-pgvector``); the PostgreSQL
tests skip, saying why, only when none of these can start. Each test gets a database of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from faceflow.errors import GalleryError, InvalidName, StoreUnavailable
from faceflow.gallery import GalleryFace, GalleryInfo, open_gallery_store
from faceflow.gallery.io import export_gallery, import_gallery
from faceflow.gallery.search import Searcher

MODEL = "test@1"
DIM = 16

@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/galleries.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(url: str):  # type: ignore[no-untyped-def]
    with open_gallery_store(url) as s:
        yield s


# -- helpers -----------------------------------------------------------------------------------------


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near(v: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    """A unit vector close to each row of ``v``."""
    x = v + noise * np.random.default_rng(seed).standard_normal(v.shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def enrol(store, gallery: str, names: list[str], vectors: np.ndarray, **extra) -> list[int]:  # type: ignore[no-untyped-def]
    return store.add_faces(gallery, [GalleryFace(n, v, **extra) for n, v in zip(names, vectors, strict=True)],
                           model=MODEL)


# -- store -------------------------------------------------------------------------------------------


def test_open_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url, path in (("sqlite:///rel.db", tmp_path / "rel.db"), (f"sqlite:///{tmp_path}/abs.db", tmp_path / "abs.db"),
                      (str(tmp_path / "plain.db"), tmp_path / "plain.db")):
        open_gallery_store(url).close()
        assert path.exists(), url
    monkeypatch.setenv("FACEFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FACEFLOW_GALLERY", raising=False)
    with open_gallery_store() as s:
        assert s.url.endswith("home/galleries.db")
    with open_gallery_store("sqlite:///:memory:") as s:
        s.create_gallery("g", MODEL, DIM)
        assert [g.name for g in s.galleries()] == ["g"]


def test_galleries_lifecycle(store) -> None:  # type: ignore[no-untyped-def]
    g = store.create_gallery("staff", MODEL, DIM, metadata={"site": "HQ"})
    assert (g.name, g.model, g.dim, g.faces, g.subjects, g.threshold) == ("staff", MODEL, DIM, 0, 0, None)
    store.create_gallery("visitors", MODEL, DIM)
    assert [x.name for x in store.galleries()] == ["staff", "visitors"]
    with pytest.raises(GalleryError, match="already exists"):
        store.create_gallery("staff", MODEL, DIM)
    with pytest.raises(GalleryError, match=r"no gallery named 'nobody'.*staff, visitors"):
        store.gallery("nobody")
    enrol(store, "staff", ["ann", "bob"], unit(2))
    store.delete_gallery("staff")
    assert [x.name for x in store.galleries()] == ["visitors"]
    assert store.check() == []


def test_faces_round_trip_every_field(store) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM)
    store.add_subject("g", "ann", {"employee": 7, "tags": ["a", "b"]})
    v = unit(3)
    ids = store.add_faces("g", [
        GalleryFace("ann", v[0], box=(1.5, 2.25, 30.125, 40.0), quality=0.875, source="photos/a b.jpg",
                    source_sha256="ab" * 32, metadata={"camera": "x"}, created_at=1700000000.123456),
        GalleryFace("bob", v[1] * 3.0),  # not unit: stored normalised
        GalleryFace("ann", v[2]),
    ], model=MODEL)
    assert ids == sorted(ids) and len(set(ids)) == 3
    faces = store.faces("g", embeddings=True)
    assert [f.id for f in faces] == ids
    a = faces[0]
    assert (a.subject, a.box, a.quality, a.source, a.source_sha256, a.metadata, a.created_at) == (
        "ann", (1.5, 2.25, 30.125, 40.0), 0.875, "photos/a b.jpg", "ab" * 32, {"camera": "x"}, 1700000000.123456)
    np.testing.assert_array_equal(a.embedding, v[0])
    np.testing.assert_allclose(faces[1].embedding, v[1], atol=1e-6)
    assert faces[1].box is None and faces[1].quality is None
    subjects = {s.name: s for s in store.subjects("g")}
    assert subjects["ann"].faces == 2 and subjects["ann"].metadata == {"employee": 7, "tags": ["a", "b"]}
    assert subjects["bob"].faces == 1 and subjects["bob"].metadata == {}
    assert [f.id for f in store.faces("g", subject="ann")] == [ids[0], ids[2]]
    vs = store.vectors("g")
    assert vs.vectors.dtype == np.float32 and vs.vectors.shape == (3, DIM)
    assert list(vs.subject_ids) == sorted(vs.subject_ids)
    assert store.gallery("g").faces == 3 and store.check() == []


def test_models_never_mix(store) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM)
    with pytest.raises(GalleryError, match="never mix"):
        store.add_faces("g", [GalleryFace("ann", unit(1)[0])], model="other@2")
    with pytest.raises(GalleryError, match="has 8 values"):
        store.add_faces("g", [GalleryFace("ann", unit(1, 8)[0])], model=MODEL)
    with pytest.raises(GalleryError, match="zero or not finite"):
        store.add_faces("g", [GalleryFace("ann", np.full(DIM, np.nan))], model=MODEL)
    assert store.gallery("g").faces == 0 and store.subjects("g") == []


def test_revisions_and_deletes(store) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM)
    ids = enrol(store, "g", ["ann", "bob", "bob"], unit(3))
    assert store.revision("g") == (1, 0)
    enrol(store, "g", ["cy"], unit(1, seed=2))
    assert store.revision("g") == (2, 0)  # appends keep reset_revision
    assert store.delete_faces("g", [ids[1], 999999]) == 1
    assert store.revision("g") == (3, 3)
    store.delete_subject("g", "ann")
    assert store.revision("g") == (4, 4)
    assert sorted(s.name for s in store.subjects("g")) == ["bob", "cy"]
    assert store.gallery("g").faces == 2
    with pytest.raises(GalleryError, match="no subject named 'ann'"):
        store.subject("g", "ann")
    assert store.check() == []


def test_transaction_is_all_or_nothing(store) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM)
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        enrol(store, "g", ["ann"], unit(1))
        raise RuntimeError("boom")
    assert store.gallery("g").faces == 0 and store.subjects("g") == []
    with pytest.raises(GalleryError), store.transaction():  # the second batch fails: the first goes with it
        enrol(store, "g", ["ann"], unit(1))
        store.add_faces("g", [GalleryFace("bob", unit(1)[0])], model="wrong@0")
    assert store.gallery("g").faces == 0


def test_reembedding_switches_model(store) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM, threshold=0.4)
    ids = enrol(store, "g", ["ann", "bob"], unit(2))
    new = unit(2, 8, seed=5)
    with pytest.raises(GalleryError, match="only 0 of 2"):
        store.switch_model("g", "new@2")
    store.put_embeddings("g", "new@2", {ids[0]: new[0]})
    assert store.models("g") == {MODEL: 2, "new@2": 1}
    with pytest.raises(GalleryError, match="only 1 of 2"):
        store.switch_model("g", "new@2")
    assert store.gallery("g").model == MODEL  # searches still use the old model meanwhile
    store.put_embeddings("g", "new@2", {ids[1]: new[1]})
    g = store.switch_model("g", "new@2")
    assert (g.model, g.dim, g.threshold) == ("new@2", 8, None)
    assert store.models("g") == {"new@2": 2}
    np.testing.assert_array_equal(store.vectors("g").vectors, new)
    assert store.check() == []


def test_schema_version_and_reopen(url: str) -> None:
    with open_gallery_store(url) as s:
        s.create_gallery("g", MODEL, DIM)
        version = s.schema_version
    assert version >= 1
    with open_gallery_store(url) as s:  # reopening migrates nothing and keeps the data
        assert s.schema_version == version and [g.name for g in s.galleries()] == ["g"]


def test_opening_a_store_waits_for_no_writer(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a store whose schema is up to date takes no write lock: a reader opens it and reads the
    last committed state while another connection is inside a write (SQLite: opening waited for the
    writer, all of BUSY_TIMEOUT_MS, and then failed with 'database is locked')."""
    from faceflow.gallery import sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 3000)
    with open_gallery_store(url) as writer:
        writer.create_gallery("g", MODEL, DIM)
        with writer.transaction():
            writer.create_gallery("uncommitted", MODEL, DIM)
            start = time.monotonic()
            with open_gallery_store(url) as reader:
                assert [g.name for g in reader.galleries()] == ["g"]
            assert time.monotonic() - start < 2.0


def test_a_writer_waits_for_another_a_bounded_time(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write blocked by another connection's write fails after the store's lock wait with
    StoreUnavailable saying that it waited (PostgreSQL waited for ever; SQLite said only 'database is
    locked')."""
    from faceflow.gallery import postgres as postgres_backend
    from faceflow.gallery import sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 500)
    monkeypatch.setattr(postgres_backend, "LOCK_TIMEOUT_MS", 500)
    got: dict[str, object] = {}
    with open_gallery_store(url) as first, open_gallery_store(url) as second:

        def create() -> None:
            try:
                got["gallery"] = second.create_gallery("x", MODEL, DIM, exist_ok=True)
            except Exception as exc:  # checked below
                got["error"] = exc

        with first.transaction():  # holds SQLite's write lock; on PostgreSQL, the new row's lock
            first.create_gallery("x", MODEL, DIM)
            blocked = threading.Thread(target=create, daemon=True)
            blocked.start()
            blocked.join(20)
            still_waiting = blocked.is_alive()
        blocked.join(20)
    assert not still_waiting, "the second writer was still waiting after 20 s"
    assert isinstance(got.get("error"), StoreUnavailable), got
    assert "waited 500ms" in str(got["error"]) or "waited 0.5 s" in str(got["error"]), got["error"]


def test_a_read_only_postgres_role_can_search(pg_url: str) -> None:
    """A role that may only read the faceflow tables opens an up-to-date store and searches it (it was
    refused: opening always ran the migration's CREATE SCHEMA and UPDATE)."""
    import psycopg

    from tests.conftest import postgres_url_as

    v = unit(2, seed=3)
    with open_gallery_store(pg_url) as s:
        s.create_gallery("g", MODEL, DIM)
        enrol(s, "g", ["ann", "bob"], v)
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in (f"CREATE ROLE {role} LOGIN", f"GRANT USAGE ON SCHEMA faceflow TO {role}",
                          f"GRANT SELECT ON ALL TABLES IN SCHEMA faceflow TO {role}"):
            conn.execute(statement)
    try:
        with open_gallery_store(postgres_url_as(pg_url, role)) as reader:
            assert [g.name for g in reader.galleries()] == ["g"]
            assert Searcher(reader, "g", threshold=0.5).identify(v[1])[0].subject == "bob"
            with pytest.raises(GalleryError):  # writing is refused by the server, as a typed error
                reader.create_gallery("h", MODEL, DIM)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_newer_sqlite_schema_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "g.db"
    open_gallery_store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(GalleryError, match="schema version 99, newer"):
        open_gallery_store(path)


def test_a_gallery_being_created_elsewhere_is_joined_not_refused(url: str) -> None:
    """Two enrolments creating the same new gallery at once: the second waits for the first and uses
    its gallery (it used to fail with "already exists" and exit 2 having enrolled nothing)."""
    with open_gallery_store(url) as first, open_gallery_store(url) as second:
        got: dict[str, object] = {}

        def create() -> None:
            try:
                got["gallery"] = second.create_gallery("new", MODEL, DIM, exist_ok=True)
            except Exception as exc:  # a failure in the thread fails the test below
                got["error"] = exc

        with first.transaction():  # the first creator's row exists but is not committed yet
            first.create_gallery("new", MODEL, DIM)
            racer = threading.Thread(target=create)
            racer.start()
            racer.join(1.0)
            assert racer.is_alive()  # blocked on the first creator (row lock / write lock), not answered
        racer.join(60)
        assert "error" not in got, got.get("error")
        g = got["gallery"]
        assert isinstance(g, GalleryInfo) and g.name == "new" and g.model == MODEL
        with pytest.raises(GalleryError, match="already exists"):  # without exist_ok it is still refused
            second.create_gallery("new", MODEL, DIM)
        assert [x.name for x in second.galleries()] == ["new"]


def test_subject_names_are_validated(store) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM)
    for bad, why in [("", "empty"), ("   ", "empty or blank"), ("ann\nbob", "U\\+000A"), ("nul\x00", "U\\+0000"),
                     ("tab\there", "U\\+0009"), ("x" * 10_000, "10,000 characters"), ("x" * 201, "at most 200")]:
        with pytest.raises(InvalidName, match=why):
            store.add_faces("g", [GalleryFace(bad, unit(1)[0])], model=MODEL)
        with pytest.raises(InvalidName):
            store.add_subject("g", bad)
    assert store.gallery("g").faces == 0 and store.subjects("g") == []
    enrol(store, "g", ["  Ann Lee ", "x" * 200, "Zoë"], unit(3))  # trimmed; 200 characters is the limit
    assert {s.name for s in store.subjects("g")} == {"Ann Lee", "x" * 200, "Zoë"}
    assert store.subject("g", "Ann Lee ").faces == 1  # lookups trim the same way
    decomposed = "Zoe\u0308"  # the same name in another Unicode form is the same subject
    enrol(store, "g", [decomposed], unit(1, seed=3))
    assert store.subject("g", "Zoë").faces == 2
    with pytest.raises(InvalidName, match="'/'"):
        store.create_gallery("a/b", MODEL, DIM)


# -- export / import ---------------------------------------------------------------------------------


def _snapshot(store, gallery: str) -> dict:  # type: ignore[no-untyped-def]
    """Everything of a gallery but the internal ids."""
    g = store.gallery(gallery)
    faces = store.faces(gallery, embeddings=True)
    other = store.faces(gallery, embeddings=True, model="next@1")
    return {
        "gallery": (g.model, g.dim, g.threshold, g.metadata, g.created_at, g.faces, g.subjects),
        "subjects": [(s.name, s.metadata, s.created_at, s.faces) for s in store.subjects(gallery)],
        "faces": [(f.subject, f.box, f.quality, f.source, f.source_sha256, f.metadata, f.created_at,
                   f.embedding.tobytes()) for f in faces],
        "models": store.models(gallery),
        "next": [None if f.embedding is None else f.embedding.tobytes() for f in other],
    }


def test_export_import_is_lossless(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM, threshold=0.321, metadata={"k": [1, 2.5, None]})
    store.add_subject("g", "zoë", {"note": "ünïcode"})
    rng = np.random.default_rng(3)
    ids = store.add_faces("g", [
        GalleryFace(name, v, box=tuple(rng.uniform(0, 500, 4)), quality=float(rng.uniform()),
                    source=f"/photos/{i}.jpg", source_sha256=f"{i:064x}", metadata={"i": i}, created_at=1e9 + i / 7)
        for i, (name, v) in enumerate(zip(["zoë", "al", "al", "bo"], unit(4), strict=True))
    ], model=MODEL)
    store.add_faces("g", [GalleryFace("cy", unit(1, seed=9)[0])], model=MODEL)  # no box, quality, source
    store.put_embeddings("g", "next@1", {ids[0]: unit(1, 4, seed=1)[0], ids[2]: unit(1, 4, seed=2)[0]})
    before = _snapshot(store, "g")
    out = export_gallery(store, "g", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["embeddings", "faces.jsonl", "gallery.json", "subjects.jsonl"]
    with pytest.raises(GalleryError, match="not empty"):
        export_gallery(store, "g", out)
    info = import_gallery(store, out, name="copy")
    assert info.name == "copy"
    assert _snapshot(store, "copy") == before
    with open_gallery_store(tmp_path / "other.db") as other:  # and into another backend
        import_gallery(other, out)
        assert _snapshot(other, "g") == before
    with pytest.raises(GalleryError, match="already exists"):
        import_gallery(store, out)


def test_import_refuses_damaged_export(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM)
    enrol(store, "g", ["ann", "bob"], unit(2))
    out = export_gallery(store, "g", tmp_path / "export")
    npy = next((out / "embeddings").glob("*.npy"))
    data = bytearray(npy.read_bytes())
    data[-1] ^= 1
    npy.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="sha256"):
        import_gallery(store, out, name="copy")
    header = json.loads((out / "gallery.json").read_text())
    header["format_version"] = 99
    (out / "gallery.json").write_text(json.dumps(header))
    with pytest.raises(GalleryError, match="unsupported format"):
        import_gallery(store, out, name="copy")
    assert [g.name for g in store.galleries()] == ["g"]


def test_export_onto_a_file_is_refused_and_keeps_it(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Path.iterdir on a file raised NotADirectoryError (a traceback); with overwrite, rmtree did."""
    store.create_gallery("g", MODEL, DIM)
    enrol(store, "g", ["ann"], unit(1))
    taken = tmp_path / "notes.txt"
    taken.write_text("a file of the user's")
    for overwrite in (False, True):
        with pytest.raises(GalleryError, match="not a folder"):
            export_gallery(store, "g", taken, overwrite=overwrite)
    assert taken.read_text() == "a file of the user's"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".notes.txt.")]  # no temporary folder left


@pytest.mark.parametrize("damage", ["no faces.jsonl", "bad line", "no embeddings key", "not an object"])
def test_import_refuses_an_export_with_a_missing_or_garbled_file(store, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 damage: str) -> None:
    """Each of these escaped as FileNotFoundError, JSONDecodeError or KeyError: a traceback, not a GalleryError."""
    store.create_gallery("g", MODEL, DIM)
    enrol(store, "g", ["ann", "bob"], unit(2))
    out = export_gallery(store, "g", tmp_path / "export")
    if damage == "no faces.jsonl":
        (out / "faces.jsonl").unlink()
    elif damage == "bad line":
        with open(out / "subjects.jsonl", "a") as fh:
            fh.write('{"name": \n')
    else:
        header = json.loads((out / "gallery.json").read_text())
        if damage == "no embeddings key":
            del header["embeddings"]
            (out / "gallery.json").write_text(json.dumps(header))
        else:
            (out / "gallery.json").write_text("[1, 2]")
    file = {"no faces.jsonl": "faces.jsonl", "bad line": "subjects.jsonl"}.get(damage, "gallery.json")
    with pytest.raises(GalleryError, match=f"export.*{file}"):
        import_gallery(store, out, name="copy")
    assert [g.name for g in store.galleries()] == ["g"]


# -- search ------------------------------------------------------------------------------------------


def test_identify_open_set_exact(store) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM, threshold=0.8)
    v = unit(50, seed=4)
    enrol(store, "g", [f"p{i}" for i in range(50)], v)
    searcher = Searcher(store, "g")
    assert searcher.mode == "exact"
    probes = np.concatenate([near(v[:10], 0.05), unit(5, seed=99)])
    results = searcher.identify(probes, top=3)
    assert [r.subject for r in results[:10]] == [f"p{i}" for i in range(10)]
    assert all(r.known and r.similarity > 0.8 and len(r.candidates) == 3 for r in results[:10])
    assert all(not r.known and r.subject is None and r.similarity < 0.8 for r in results[10:])
    assert results[10].candidates[0].similarity >= results[10].candidates[1].similarity
    d = results[0].to_dict()
    assert d["subject"] == "p0" and d["known"] and d["threshold"] == 0.8 and len(d["candidates"]) == 3
    # the searcher follows the gallery: a new subject is found without making a new searcher
    enrol(store, "g", ["late"], near(v[0:1], 0.01, seed=7) * -1)
    assert searcher.identify(-v[0])[0].subject == "late"


def test_a_searcher_follows_its_gallery_deleted_and_made_again(store) -> None:  # type: ignore[no-untyped-def]
    """A gallery deleted and made again under its name (say by another process) is searched anew, also
    when the new one has reached the revision the searcher had loaded (it kept answering from the
    deleted gallery's faces, with their names)."""
    v = unit(2, seed=5)
    store.create_gallery("g", MODEL, DIM)
    enrol(store, "g", ["ann"], v[:1])
    searcher = Searcher(store, "g", threshold=0.5)
    assert searcher.identify(v[0])[0].subject == "ann"
    store.delete_gallery("g")
    store.create_gallery("g", MODEL, DIM)
    enrol(store, "g", ["bob"], v[1:])
    assert store.revision("g") == (1, 0)  # the revision the searcher loaded from the old gallery
    (answer,) = searcher.identify(v[0])
    assert [c.subject for c in answer.candidates] == ["bob"] and not answer.known


def test_aggregate_max_versus_mean(store) -> None:  # type: ignore[no-untyped-def]
    """ann: one face equal to the probe and one far from it; bob: two faces fairly close to it."""
    store.create_gallery("g", MODEL, 2, threshold=0.0)
    angle = np.deg2rad
    vec = [np.array([np.cos(angle(a)), np.sin(angle(a))]) for a in (0, 120, 30, -30)]
    store.add_faces("g", [GalleryFace(n, x) for n, x in zip(["ann", "ann", "bob", "bob"], vec, strict=True)],
                    model=MODEL)
    probe = np.array([1.0, 0.0])
    best = Searcher(store, "g", aggregate="max").identify(probe)[0]
    assert best.subject == "ann" and best.similarity == pytest.approx(1.0)
    mean = Searcher(store, "g", aggregate="mean").identify(probe)[0]
    assert mean.subject == "bob" and mean.similarity == pytest.approx(np.cos(angle(30)), abs=1e-6)
    assert mean.candidates[1].similarity == pytest.approx((1 + np.cos(angle(120))) / 2, abs=1e-6)
    for aggregate in ("max", "mean"):  # the ANN path agrees with the exact one
        ann = Searcher(store, "g", aggregate=aggregate, ann=True).identify(probe)[0]  # type: ignore[arg-type]
        exact = Searcher(store, "g", aggregate=aggregate).identify(probe)[0]  # type: ignore[arg-type]
        assert [(c.subject, round(c.similarity, 5)) for c in ann.candidates] == [
            (c.subject, round(c.similarity, 5)) for c in exact.candidates]


def test_ann_matches_exact(store) -> None:  # type: ignore[no-untyped-def]
    n = 3000
    store.create_gallery("g", MODEL, DIM, threshold=0.5)
    v = unit(n, seed=11)
    ids = enrol(store, "g", [f"p{i // 2}" for i in range(n)], v)
    probes = near(v[::15], 0.1, seed=3)  # 200 planted near-duplicates
    ann = Searcher(store, "g", ann=True, candidates=50)
    assert ann.mode == ("pgvector" if store.has_native_ann() else "usearch")
    exact = Searcher(store, "g")
    a_ids, a_scores = ann.search_faces(probes, k=5)
    e_ids, e_scores = exact.search_faces(probes, k=5)
    assert (a_ids[:, 0] == e_ids[:, 0]).mean() >= 0.99
    assert (e_ids[:, 0] == np.array(ids)[::15]).mean() >= 0.99
    np.testing.assert_allclose(a_scores[a_ids == e_ids], e_scores[a_ids == e_ids], atol=1e-6)  # exact re-scoring
    same = [x.subject for x in ann.identify(probes)] == [x.subject for x in exact.identify(probes)]
    assert same
    if store.has_native_ann():
        assert "hnsw_g" in store.explain_ann("g", probes[0])


def test_usearch_index_is_saved_extended_and_rebuilt(tmp_path: Path) -> None:
    with open_gallery_store(tmp_path / "g.db") as store:
        store.create_gallery("g", MODEL, DIM, threshold=0.5)
        v = unit(400, seed=2)
        ids = enrol(store, "g", [f"p{i}" for i in range(300)], v[:300])
        s1 = Searcher(store, "g", ann=True)
        s1.refresh()
        files = list((tmp_path / "g.db.indexes").glob("g*.usearch"))
        assert len(files) == 1
        stamp = json.loads(files[0].with_suffix(".json").read_text())
        assert stamp["max_face_id"] == max(ids) and stamp["revision"] == 1
        enrol(store, "g", [f"q{i}" for i in range(100)], v[300:])
        s1.refresh()  # extended in place
        assert len(s1._index) == 400
        s2 = Searcher(store, "g", ann=True)
        s2.refresh()  # loaded from disk, up to date
        assert s2._index.stamp["revision"] == 2 and len(s2._index) == 400
        assert s2.identify(v[350])[0].subject == "q50"
        store.delete_faces("g", ids[:10])
        s2.refresh()  # a deletion: rebuilt
        assert len(s2._index) == 390
        assert s2.identify(v[5])[0].subject != "p5"


def test_calibrate_threshold_on_gallery(store) -> None:  # type: ignore[no-untyped-def]
    store.create_gallery("g", MODEL, DIM)
    enrol(store, "g", [f"p{i}" for i in range(400)], unit(400, seed=8))
    searcher = Searcher(store, "g")
    t = searcher.calibrate(fpir=0.05)
    g = store.gallery("g")
    assert g.threshold == t and "FPIR 0.05" in g.metadata["threshold_note"]
    probes = unit(400, seed=123)  # fresh non-mated probes: about 5 % false positives
    false_pos = np.mean([r.known for r in searcher.identify(probes)])
    assert 0.0 < false_pos < 0.12


# -- consistency under crashes and concurrency -------------------------------------------------------

_ENROLLER = textwrap.dedent("""
    import sys, time, numpy as np
    from faceflow.gallery import GalleryFace, open_gallery_store
    store = open_gallery_store(sys.argv[1])
    rng = np.random.default_rng(0)
    batch, prefix, pause = int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    for i in range(1_000_000):
        v = rng.standard_normal((batch, 16)).astype(np.float32)
        faces = [GalleryFace(f"{prefix}-{i}", x, box=(0, 0, 1, 1), metadata={"batch": i}) for x in v]
        with store.transaction():  # one batch = two writes in one transaction
            store.add_faces("g", faces[: batch // 2], model="test@1")
            print("half", i, flush=True)
            time.sleep(pause)
            store.add_faces("g", faces[batch // 2 :], model="test@1")
        print("done", i, flush=True)
""")


def _start_enroller(url: str, batch: int, prefix: str = "batch", pause: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _ENROLLER, url, str(batch), prefix, str(pause)],
                            stdout=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen[str], event: str, batch: int, timeout: float = 120.0) -> int:
    """Read the enroller's reports until ``event`` of batch ``batch``; returns how many batches were done."""
    assert proc.stdout is not None
    start, done = time.monotonic(), 0
    while True:
        line = proc.stdout.readline().split()
        assert line, "the enrolling process died"
        done += line[0] == "done"
        if line == [event, str(batch)]:
            return done
        assert time.monotonic() - start < timeout


def _check_whole_batches(url: str, batch: int) -> int:
    """The gallery is consistent and holds whole batches only; returns how many."""
    with open_gallery_store(url) as s:
        assert s.check() == []
        g = s.gallery("g")
        subjects = s.subjects("g")
        assert g.faces == batch * len(subjects), "a batch was stored in part"
        assert all(x.faces == batch for x in subjects)
        assert g.revision == 2 * len(subjects)  # two writes per committed batch, none from a lost one
        vs = s.vectors("g")
        assert len(vs) == g.faces and np.isfinite(vs.vectors).all()
        assert Searcher(s, "g", threshold=0.5).identify(vs.vectors[:2])[0].known
        return len(subjects)


@pytest.mark.timeout(300)
def test_killed_enrolment_leaves_gallery_consistent(url: str) -> None:
    """SIGKILL an enrolling process inside a batch's transaction (twice), then at a random moment."""
    batch = 300
    with open_gallery_store(url) as s:
        s.create_gallery("g", MODEL, DIM)
    total = 0
    for round_ in range(2):  # killed while half of batch 2 is written and the other half is not
        proc = _start_enroller(url, batch, f"mid{round_}", pause=5.0)
        _wait_for(proc, "half", 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        total += 2  # batches 0 and 1; nothing of batch 2
        assert _check_whole_batches(url, batch) == total
    proc = _start_enroller(url, batch, "random")
    done = _wait_for(proc, "done", 2)
    time.sleep(float(np.random.default_rng().uniform(0, 0.05)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    done += proc.stdout.read().split().count("done")
    # every reported batch is there; one more if the kill came between a commit and its report
    assert _check_whole_batches(url, batch) - total in (done, done + 1)


@pytest.mark.timeout(300)
def test_readers_see_whole_batches_while_one_writer_enrols(url: str) -> None:
    batch = 200
    with open_gallery_store(url) as s:
        s.create_gallery("g", MODEL, DIM)
    # A short pause inside each batch keeps the gallery small enough for the reader to loop many
    # times in 3 s; the reports are drained meanwhile, or a full pipe would stop the writer.
    proc = _start_enroller(url, batch, pause=0.01)
    try:
        _wait_for(proc, "done", 0)
        assert proc.stdout is not None
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        with open_gallery_store(url) as reader:
            searcher = Searcher(reader, "g", threshold=0.5, ann=False)  # no index build mid-loop
            sizes = set()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                n = len(reader.vectors("g"))
                assert n % batch == 0
                sizes.add(n)
                assert searcher.identify(unit(1)[0])[0].candidates
        assert len(sizes) > 1, "the writer made no progress while reading"
    finally:
        proc.kill()
        proc.wait()


def test_a_photo_enrolled_again_for_its_subject_is_stored_once(url: str) -> None:
    """``add_faces_once``: the same photo bytes for the same subject (a retried enrolment, two clients
    racing) give the face already stored; for another subject, or without a digest, a new face."""
    v = unit(4)
    with open_gallery_store(url) as s:
        s.create_gallery("g", MODEL, DIM)
        first, held = s.add_faces_once("g", [GalleryFace("ann", v[0], source_sha256="aa"),
                                              GalleryFace("ann", v[1], source_sha256="aa"),  # a copy in one batch
                                              GalleryFace("bob", v[2], source_sha256="aa")], model=MODEL)
        assert first[0] == first[1] != first[2] and held == [False, True, False]
        again, held = s.add_faces_once("g", [GalleryFace("ann", v[0], source_sha256="aa"),
                                              GalleryFace("ann", v[3], source_sha256="bb"),
                                              GalleryFace("ann", v[3])], model=MODEL)
        assert again[0] == first[0] and held == [True, False, False]
        assert s.gallery("g").faces == 4

    results: list[list[int]] = []

    def racer(vec: np.ndarray) -> None:
        with open_gallery_store(url) as mine:
            results.append(mine.add_faces_once("g", [GalleryFace("cy", vec, source_sha256="cc")], model=MODEL)[0])

    threads = [threading.Thread(target=racer, args=(v[i],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and len({r[0] for r in results}) == 1
    with open_gallery_store(url) as s:
        assert len(s.faces("g", subject="cy")) == 1


def test_a_gallery_id_past_int4_still_takes_its_enrolment_lock(pg_url: str) -> None:
    """PostgreSQL's two-key advisory lock takes int4 keys; a gallery id past 2^31 (a long-lived
    BIGSERIAL) must still lock, not fail with 'integer out of range'."""
    with open_gallery_store(pg_url) as s:
        s._q("lock_gallery", 7, 2**31 + 5)  # inside autocommit: taken and released at once
        s.create_gallery("g", MODEL, DIM)
        ids, held = s.add_faces_once("g", [GalleryFace("ann", unit(1)[0], source_sha256="aa")], model=MODEL)
        assert len(ids) == 1 and held == [False]
