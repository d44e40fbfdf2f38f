"""The gallery store: galleries of subjects and their faces' embeddings, one API over SQLite and PostgreSQL.

A *gallery* is bound to one embedding model (``"name@version"``, e.g. ``"sface@d1b9fcf732a4"``) and its
dimension. Every face carries an embedding of that model; embeddings of another model are refused
(:class:`~faceflow.errors.GalleryError`), so that scores never mix models. Changing the model is an
explicit re-embedding job: :meth:`GalleryStore.put_embeddings` for every face, then
:meth:`GalleryStore.switch_model`.

Every write is one transaction and bumps the gallery's ``revision``; a change that is not a pure
append (a deletion, a model switch) also sets ``reset_revision``, so that a search index built at an
earlier revision knows whether it may be extended or must be rebuilt.

:func:`faceflow.gallery.backends.open_gallery_store` picks the backend from a URL or path (this
module knows no backend, so that the backends may import it).

Names of galleries and subjects go through :func:`check_name`: surrounding spaces are trimmed, the
text is NFC-normalised, and empty names, control characters and names over :data:`MAX_NAME_LENGTH`
characters are refused (:class:`~faceflow.errors.InvalidName`).
"""

from __future__ import annotations

import json
import threading
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from faceflow.errors import AlreadyExists, GalleryError, InvalidName, ModelMismatch, NotFound
from faceflow.types import FloatArray

MAX_NAME_LENGTH = 200
"""Longest gallery or subject name, in characters (after trimming)."""
ENROL_LOCK = 0x656E726F
"""First key of the per-gallery lock :meth:`GalleryStore.add_new_faces` holds (PostgreSQL advisory lock)."""


def check_name(name: object, what: str = "subject") -> str:
    """``name`` as stored: trimmed and NFC-normalised; :class:`InvalidName` when it cannot be a name.

    Refused: non-strings, empty or blank names, control characters (line breaks and tabs included),
    line/paragraph separators, lone surrogates, more than :data:`MAX_NAME_LENGTH` characters, and for
    galleries a ``/``.
    """
    if not isinstance(name, str):
        raise InvalidName(f"a {what} name must be text, got {type(name).__name__}")
    text = unicodedata.normalize("NFC", name.strip())
    if not text:
        raise InvalidName(f"a {what} name cannot be empty or blank")
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        raise InvalidName(f"{what} name {text[:40]!r} contains the control character U+{ord(bad):04X}")
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} name of {len(text):,} characters: at most {MAX_NAME_LENGTH} allowed")
    if what == "gallery" and "/" in text:
        raise InvalidName(f"gallery name {text!r} contains '/'")
    return text


def redact_url(url: str) -> str:
    """``url`` fit to print: a password given as ``user:password@`` or as ``password=`` in the query
    becomes ``***`` (a store's URL goes into messages, logs and reports)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        user_info, _, host = netloc.rpartition("@")
        netloc = f"{user_info.partition(':')[0]}:***@{host}"
    query = "&".join("password=***" if p.partition("=")[0].lower() == "password" else p
                     for p in parts.query.split("&")) if parts.query else parts.query
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as given: unsplitting would turn sqlite:////abs.db into sqlite://abs.db
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def model_id(name: str, version: str | None = None) -> str:
    """The key that embeddings are stored under: ``"name@version"`` (or just ``name``)."""
    if not name or "@" in name:
        raise GalleryError(f"bad model name {name!r}")
    return f"{name}@{version}" if version else name


def model_name(model: str) -> str:
    """The model name part of a ``"name@version"`` key."""
    return model.split("@", 1)[0]


@dataclass(frozen=True)
class GalleryInfo:
    """One gallery: its embedding model and dimension, open-set threshold, counters."""

    id: int
    name: str
    model: str
    dim: int
    threshold: float | None
    """Open-set decision threshold on cosine similarity; ``None`` = the model's calibrated default."""
    metadata: dict[str, Any]
    created_at: float
    revision: int
    reset_revision: int
    subjects: int = 0
    faces: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model": self.model, "dim": self.dim, "threshold": self.threshold,
            "subjects": self.subjects, "faces": self.faces, "created_at": self.created_at,
            "revision": self.revision, "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Subject:
    """A person of a gallery (names are unique within a gallery)."""

    id: int
    name: str
    metadata: dict[str, Any]
    created_at: float
    faces: int = 0


@dataclass
class GalleryFace:
    """A face to enrol, or one read back (then ``id`` and ``subject_id`` are set)."""

    subject: str
    embedding: FloatArray | None = None
    box: tuple[float, float, float, float] | None = None
    quality: float | None = None
    source: str | None = None
    """Where the face came from (a path or URI, as given)."""
    source_sha256: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float | None = None
    """Seconds since the epoch; ``None`` on input means now."""
    id: int | None = None
    subject_id: int | None = None


@dataclass(frozen=True)
class VectorSet:
    """The embeddings of (part of) a gallery, sorted by subject then face, ready for matrix search."""

    face_ids: npt.NDArray[np.int64]
    subject_ids: npt.NDArray[np.int64]
    vectors: FloatArray

    def __len__(self) -> int:
        return int(self.face_ids.shape[0])

    @classmethod
    def empty(cls, dim: int) -> VectorSet:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), np.float32))


def _unit_rows(values: Iterable[npt.ArrayLike], dim: int) -> FloatArray:
    """Stack embeddings as unit-norm float32 rows, refusing wrong sizes and non-finite values."""
    rows = [np.asarray(v, dtype=np.float32).reshape(-1) for v in values]
    if not rows:
        return np.zeros((0, dim), np.float32)
    bad = next((r.shape[0] for r in rows if r.shape[0] != dim), None)
    if bad is not None:
        raise GalleryError(f"embedding has {bad} values; this gallery's model has {dim}")
    arr = np.stack(rows)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if not np.isfinite(arr).all() or (norms <= 1e-12).any():
        raise GalleryError("embedding is zero or not finite")
    # Rows already unit-norm to float32 precision stay bit for bit (export/import is lossless).
    norms = np.where(np.abs(norms - 1.0) <= 1e-5, 1.0, norms)
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def _box(value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    b = [float(x) for x in np.asarray(value, dtype=np.float64).reshape(-1)]
    if len(b) != 4:
        raise GalleryError(f"box must be [x1, y1, x2, y2], got {value!r}")
    return b[0], b[1], b[2], b[3]


class GalleryStore(ABC):
    """Galleries, subjects and faces with their embeddings (see the module docstring).

    The generic logic lives here; a backend supplies its SQL (:attr:`SQL`, one statement per key,
    the same keys and parameter order in every backend) and a few primitives. A store object may be
    shared between threads (calls are serialised); use one per process.
    """

    SQL: ClassVar[Mapping[str, str]]
    url: str

    @property
    def shown_url(self) -> str:
        """:attr:`url` without its password, for messages (:func:`redact_url`)."""
        return redact_url(self.url)

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._writing = False

    # -- backend primitives ----------------------------------------------------------------------
    @abstractmethod
    def _begin(self, write: bool) -> None: ...

    @abstractmethod
    def _end(self, commit: bool) -> None: ...

    @abstractmethod
    def _run(self, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> list[tuple[Any, ...]]:
        """Execute ``sql`` (``many``: once per row of ``params``); return the rows it produced."""

    @abstractmethod
    def _vec_param(self, vector: FloatArray) -> Any: ...

    @abstractmethod
    def _decode_vectors(self, values: Sequence[Any], dim: int) -> FloatArray: ...

    @abstractmethod
    def _list_param(self, values: Sequence[Any]) -> Any: ...

    @abstractmethod
    def _reserve_face_ids(self, n: int) -> list[int]: ...

    @abstractmethod
    def _integrity_problems(self) -> list[str]:
        """Backend-level checks (page checksums, foreign keys)."""

    @abstractmethod
    def close(self) -> None: ...

    def _json_param(self, value: Any) -> Any:
        return json.dumps(value, allow_nan=False) if value is not None else None

    def _json_value(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str | bytes) else value

    def _on_gallery_deleted(self, gallery: GalleryInfo) -> None:  # noqa: B027 - an optional hook
        """Hook: drop what a backend keeps beside a gallery (indexes)."""

    # -- optional search hooks -------------------------------------------------------------------
    def index_dir(self) -> Path | None:
        """Folder where an in-process ANN index may be saved between runs (``None``: keep none)."""
        return None

    def has_native_ann(self) -> bool:
        """True when :meth:`ann_search` runs inside the database (pgvector)."""
        return False

    def ensure_ann_index(self, gallery: str) -> None:
        """Build the database's ANN index for ``gallery`` if it has none (backends with native ANN)."""
        raise NotImplementedError

    def ann_search(self, gallery: GalleryInfo, queries: FloatArray, k: int, *, ef: int = 200) -> list[VectorSet]:
        """The ``k`` approximate nearest faces of each query, with their exact vectors (native ANN);
        ``ef`` is the breadth of the graph search."""
        raise NotImplementedError

    # -- plumbing --------------------------------------------------------------------------------
    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[None]:
        """One transaction around the block; nested blocks join the outer one (all or nothing)."""
        with self._lock:
            if self._depth:
                if write and not self._writing:
                    raise RuntimeError("a write cannot be nested inside a read-only transaction")
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._begin(write)
            self._depth, self._writing = 1, write
            ok = False
            try:
                yield
                ok = True
            finally:
                self._depth, self._writing = 0, False
                self._end(commit=ok)

    def _q(self, key: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement (in the current transaction, or on its own: a single read is consistent)."""
        with self._lock:
            return self._run(self.SQL[key], params)

    def _many(self, key: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self._lock:
                self._run(self.SQL[key], rows, many=True)

    def _bump(self, gallery_id: int, *, reset: bool) -> None:
        self._q("bump_revision", bool(reset), gallery_id)

    # -- galleries -------------------------------------------------------------------------------
    def _gallery_from_row(self, row: Sequence[Any]) -> GalleryInfo:
        gid, name, model, dim, threshold, metadata, created, rev, reset, n_subjects, n_faces = row
        return GalleryInfo(
            int(gid), name, model, int(dim), None if threshold is None else float(threshold),
            self._json_value(metadata) or {}, float(created), int(rev), int(reset), int(n_subjects), int(n_faces),
        )

    def create_gallery(
        self, name: str, model: str, dim: int, *, threshold: float | None = None,
        metadata: Mapping[str, Any] | None = None, created_at: float | None = None, exist_ok: bool = False,
    ) -> GalleryInfo:
        """A new, empty gallery for embeddings of ``model`` (``"name@version"``) with ``dim`` values.

        ``exist_ok=True`` returns the gallery already called ``name`` instead of refusing it, whatever
        its model (the caller checks it), also when another process creates it at the same moment.
        """
        name = check_name(name, "gallery")
        if dim <= 0:
            raise GalleryError(f"embedding dimension must be positive, got {dim}")
        with self.transaction():
            # ON CONFLICT DO NOTHING: a concurrent creator's row wins without failing this transaction.
            created = self._q("insert_gallery", name, model, int(dim), threshold,
                              self._json_param(dict(metadata or {})),
                              time.time() if created_at is None else float(created_at))
            if not created and not exist_ok:
                raise AlreadyExists(f"gallery {name!r} already exists")
            return self.gallery(name)

    def gallery(self, name: str, *, counts: bool = True) -> GalleryInfo:
        """The gallery called ``name``; :class:`GalleryError` if there is none.

        ``counts=False`` skips counting subjects and faces (they read -1): cheap on a big gallery.
        """
        rows = self._q("gallery_by_name" if counts else "gallery_head", check_name(name, "gallery"))
        if not rows:
            known = ", ".join(g.name for g in self.galleries()) or "none yet"
            raise NotFound(f"no gallery named {name!r} (galleries: {known})")
        return self._gallery_from_row(rows[0])

    def galleries(self) -> list[GalleryInfo]:
        """All galleries, by name."""
        return [self._gallery_from_row(r) for r in self._q("list_galleries")]

    def delete_gallery(self, name: str) -> None:
        """Delete a gallery with its subjects, faces and embeddings."""
        with self.transaction():
            g = self.gallery(name, counts=False)
            for key in ("delete_gallery_embeddings", "delete_gallery_faces", "delete_gallery_subjects",
                        "delete_gallery"):
                self._q(key, g.id)
            self._on_gallery_deleted(g)

    def set_threshold(self, gallery: str, threshold: float | None, note: str | None = None) -> GalleryInfo:
        """Set (or with ``None`` reset to the model default) the gallery's open-set threshold."""
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise GalleryError(f"a cosine threshold lies in [-1, 1], got {threshold}")
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            meta = dict(g.metadata)
            if note is None:
                meta.pop("threshold_note", None)
            else:
                meta["threshold_note"] = note
            self._q("update_gallery_settings", threshold, self._json_param(meta), g.id)
            self._bump(g.id, reset=False)
            return self.gallery(gallery)

    def revision(self, gallery: str) -> tuple[int, int]:
        """``(revision, reset_revision)``: changes on every write / on every non-append write."""
        g = self.gallery(gallery, counts=False)
        return g.revision, g.reset_revision

    # -- subjects --------------------------------------------------------------------------------
    def add_subject(
        self, gallery: str, name: str, metadata: Mapping[str, Any] | None = None, *, created_at: float | None = None
    ) -> Subject:
        """A new subject (a name already in the gallery raises :class:`GalleryError`)."""
        name = check_name(name)
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            if self._q("subject_by_name", g.id, name):
                raise AlreadyExists(f"subject {name!r} already exists in gallery {gallery!r}")
            self._q("insert_subject", g.id, name, self._json_param(dict(metadata or {})),
                    time.time() if created_at is None else float(created_at))
            self._bump(g.id, reset=False)
            return self.subject(gallery, name)

    def subject(self, gallery: str, name: str) -> Subject:
        """The subject called ``name``; :class:`GalleryError` if there is none."""
        name = check_name(name)
        with self.transaction(write=False):
            rows = self._q("subject_by_name", self.gallery(gallery, counts=False).id, name)
        if not rows:
            raise NotFound(f"no subject named {name!r} in gallery {gallery!r}")
        return self._subject_from_row(rows[0])

    def _subject_from_row(self, row: Sequence[Any]) -> Subject:
        sid, name, metadata, created, n = row
        return Subject(int(sid), name, self._json_value(metadata) or {}, float(created), int(n))

    def subjects(self, gallery: str) -> list[Subject]:
        """All subjects of a gallery with their face counts, by name."""
        with self.transaction(write=False):
            return [self._subject_from_row(r) for r in self._q("list_subjects", self.gallery(gallery, counts=False).id)]

    def subject_names(self, gallery: str, subject_ids: Iterable[int]) -> dict[int, str]:
        """Names of the given subject ids."""
        ids = sorted({int(i) for i in subject_ids})
        if not ids:
            return {}
        return {int(i): n for i, n in self._q("subject_names", gallery, self._list_param(ids))}

    def delete_subject(self, gallery: str, name: str) -> None:
        """Delete a subject and all its faces."""
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            s = self.subject(gallery, name)
            for key in ("delete_subject_embeddings", "delete_subject_faces", "delete_subject"):
                self._q(key, s.id)
            self._bump(g.id, reset=True)

    def _subject_ids(self, gallery_id: int, names: Sequence[str]) -> dict[str, int]:
        """Ids of ``names`` in the gallery, creating the subjects that do not exist yet."""
        unique = list(dict.fromkeys(names))
        now = time.time()
        self._many("insert_subject_if_new", [(gallery_id, n, "{}", now) for n in unique])
        found = {n: int(i) for i, n in self._q("subject_ids", gallery_id, self._list_param(unique))}
        missing = [n for n in unique if n not in found]
        if missing:
            raise GalleryError(f"could not create subjects {missing[:5]!r}")
        return found

    # -- faces -----------------------------------------------------------------------------------
    def _check_model(self, g: GalleryInfo, model: str) -> None:
        if model != g.model:
            raise ModelMismatch(
                f"gallery {g.name!r} holds {g.model} embeddings, these are {model}: embeddings of different "
                "models never mix; re-embed the gallery or use another one"
            )

    def add_faces(self, gallery: str, faces: Sequence[GalleryFace], *, model: str) -> list[int]:
        """Enrol faces (their ``model`` embeddings) in one transaction; subjects are created by name.

        Returns the new face ids, in order. Embeddings are stored L2-normalised as float32.
        """
        faces = list(faces)
        names = [check_name(f.subject) for f in faces]
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            self._check_model(g, model)
            if not faces:
                return []
            if any(f.embedding is None for f in faces):
                raise GalleryError("every face to enrol needs an embedding")
            vectors = _unit_rows((f.embedding for f in faces), g.dim)  # type: ignore[misc]
            subject_ids = self._subject_ids(g.id, names)
            ids = self._reserve_face_ids(len(faces))
            now = time.time()
            self._many("insert_face", [
                (fid, g.id, subject_ids[n], self._json_param(_box(f.box)),
                 None if f.quality is None else float(f.quality), f.source, f.source_sha256,
                 self._json_param(dict(f.metadata)), now if f.created_at is None else float(f.created_at))
                for fid, f, n in zip(ids, faces, names, strict=True)
            ])
            self._many("insert_embedding", [
                (fid, g.id, subject_ids[n], model, g.dim, self._vec_param(v))
                for fid, n, v in zip(ids, names, vectors, strict=True)
            ])
            self._bump(g.id, reset=False)
            return ids

    def enrolled_sources(self, gallery: str, sources: Sequence[str]) -> set[tuple[str, str | None]]:
        """The ``(source, source_sha256)`` pairs among ``sources`` that the gallery holds a face of."""
        if not sources:
            return set()
        with self.transaction(write=False):
            g = self.gallery(gallery, counts=False)
            rows = self._q("sources_in", g.id, self._list_param(list(dict.fromkeys(sources))))
        return {(str(s), None if h is None else str(h)) for s, h in rows}

    def add_new_faces(self, gallery: str, faces: Sequence[GalleryFace], *, model: str) -> tuple[list[int], int]:
        """:meth:`add_faces` for the faces whose photo (same ``source`` and ``source_sha256``) the
        gallery does not hold yet, in one transaction that holds the gallery's enrolment lock, so that
        concurrent or repeated enrolments of one photo store it once. Returns (new ids, photos skipped)."""
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            self._q("lock_gallery", ENROL_LOCK, g.id)
            held = self.enrolled_sources(gallery, [f.source for f in faces if f.source is not None])
            fresh, seen = [], set(held)
            for f in faces:
                key = (f.source, f.source_sha256)
                if f.source is not None and key in seen:
                    continue
                seen.add(key)  # type: ignore[arg-type]
                fresh.append(f)
            return self.add_faces(gallery, fresh, model=model), len(faces) - len(fresh)

    def add_faces_once(self, gallery: str, faces: Sequence[GalleryFace], *, model: str) -> tuple[list[int], list[bool]]:
        """:meth:`add_faces` for the faces whose photo (``source_sha256``) their subject does not hold
        yet; for the others the id of the face already stored. One transaction holding the gallery's
        enrolment lock, so an enrolment retried (a client that timed out, a rerun) or two racing on one
        photo store it once. Returns the ids in order and, for each, whether it was already there."""
        faces = list(faces)
        names = [check_name(f.subject) for f in faces]
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            self._q("lock_gallery", ENROL_LOCK, g.id)
            shas = list(dict.fromkeys(f.source_sha256 for f in faces if f.source_sha256))
            held: dict[tuple[str, str], int] = {}
            for subject, sha, fid in (self._q("faces_of_photos", g.id, self._list_param(shas)) if shas else []):
                held.setdefault((str(subject), str(sha)), int(fid))
            fresh: list[GalleryFace] = []
            out: list[tuple[int, bool]] = []  # (face id, or -1 - index into fresh; already stored)
            for f, n in zip(faces, names, strict=True):
                key = (n, f.source_sha256 or "")
                if f.source_sha256 and key in held:
                    out.append((held[key], True))
                    continue
                if f.source_sha256:
                    held[key] = -1 - len(fresh)  # a later copy in this batch is this new face
                out.append((-1 - len(fresh), False))
                fresh.append(f)
            new_ids = self.add_faces(gallery, fresh, model=model)
            return [new_ids[-1 - v] if v < 0 else v for v, _ in out], [seen for _, seen in out]

    def faces(
        self, gallery: str, *, subject: str | None = None, embeddings: bool = False, model: str | None = None
    ) -> list[GalleryFace]:
        """Faces of a gallery (or of one subject) by id; ``embeddings=True`` fills ``embedding``
        with the gallery's model (or ``model``), left ``None`` for a face without one."""
        with self.transaction(write=False):
            g = self.gallery(gallery, counts=False)
            sid = self.subject(gallery, subject).id if subject is not None else None
            rows = self._q("list_faces", g.id, sid, sid)
            vectors: dict[int, FloatArray] = {}
            if embeddings:
                vs = self.vectors(gallery, model=model, subject_ids=None if sid is None else [sid])
                vectors = dict(zip(vs.face_ids.tolist(), vs.vectors, strict=True))
        out = []
        for fid, sid_, sname, box, quality, source, sha, meta, created in rows:
            b = self._json_value(box)
            out.append(GalleryFace(
                subject=sname, embedding=vectors.get(int(fid)), box=None if b is None else _box(b),
                quality=None if quality is None else float(quality), source=source, source_sha256=sha,
                metadata=self._json_value(meta) or {}, created_at=float(created), id=int(fid), subject_id=int(sid_),
            ))
        return out

    def delete_faces(self, gallery: str, face_ids: Iterable[int]) -> int:
        """Delete faces by id; returns how many there were (subjects stay, possibly with no face)."""
        ids = sorted({int(i) for i in face_ids})
        if not ids:
            return 0
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            found = self._q("count_faces_in", g.id, self._list_param(ids))[0][0]
            self._q("delete_embeddings_in", g.id, self._list_param(ids))
            self._q("delete_faces_in", g.id, self._list_param(ids))
            self._bump(g.id, reset=True)
            return int(found)

    def vectors(
        self, gallery: str, *, model: str | None = None, subject_ids: Sequence[int] | None = None
    ) -> VectorSet:
        """Embeddings of the gallery's model (or ``model``), sorted by subject then face id."""
        with self.transaction(write=False):
            g = self.gallery(gallery, counts=False)
            m = model or g.model
            if subject_ids is None:
                rows = self._q("vectors", g.id, m)
            else:
                rows = self._q("vectors_of_subjects", g.id, m, self._list_param(sorted({int(s) for s in subject_ids})))
        if not rows:
            return VectorSet.empty(g.dim)
        fids, sids, values = zip(*rows, strict=True)
        dim = g.dim if m == g.model else self._model_dim(g.id, m)
        return VectorSet(np.asarray(fids, np.int64), np.asarray(sids, np.int64), self._decode_vectors(values, dim))

    def face_page(self, gallery: str, after: int = -1, limit: int = 65_536) -> list[tuple[int, str, str | None]]:
        """Up to ``limit`` faces with an embedding of the gallery's model whose id is above ``after``, by
        id: ``(face id, subject name, source)``. Keyset pagination: pass the last id to get the next page."""
        with self.transaction(write=False):
            g = self.gallery(gallery, counts=False)
            rows = self._q("face_page", g.id, g.model, int(after), int(limit))
        return [(int(fid), str(name), source) for fid, name, source in rows]

    def face_vectors(self, gallery: str, face_ids: Iterable[int]) -> tuple[
            npt.NDArray[np.int64], FloatArray, list[str | None]]:
        """``(face ids, embeddings, sources)`` of the given faces (the gallery's model), by id."""
        with self.transaction(write=False):
            g = self.gallery(gallery, counts=False)
            rows = self._q("vectors_of_faces", g.id, g.model, self._list_param(sorted({int(i) for i in face_ids})))
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, g.dim), np.float32), []
        fids, values, sources = zip(*rows, strict=True)
        return np.asarray(fids, np.int64), self._decode_vectors(values, g.dim), list(sources)

    def _model_dim(self, gallery_id: int, model: str) -> int:
        rows = self._q("model_dims", gallery_id, model)
        return int(rows[0][0]) if rows else 0

    # -- re-embedding ----------------------------------------------------------------------------
    def models(self, gallery: str) -> dict[str, int]:
        """Each model with embeddings in the gallery and how many faces have one."""
        with self.transaction(write=False):
            return {m: int(n) for m, n in self._q("model_counts", self.gallery(gallery, counts=False).id)}

    def put_embeddings(self, gallery: str, model: str, vectors: Mapping[int, npt.ArrayLike]) -> None:
        """Store (or replace) embeddings of another model for existing faces: a re-embedding job's step."""
        if not vectors:
            return
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            if model == g.model:
                raise GalleryError(f"{model} is the gallery's current model; its embeddings are set at enrolment")
            ids = [int(i) for i in vectors]
            arr = np.stack([np.asarray(vectors[i], np.float32).reshape(-1) for i in ids])
            dim = self._model_dim(g.id, model) or arr.shape[1]
            arr = _unit_rows(arr, dim)
            subject_of = dict(self._q("face_subjects", g.id, self._list_param(ids)))
            if len(subject_of) != len(set(ids)):
                raise GalleryError("some face ids are not in this gallery")
            self._q("delete_model_embeddings_in", g.id, model, self._list_param(ids))
            self._many("insert_embedding", [
                (i, g.id, subject_of[i], model, dim, self._vec_param(v)) for i, v in zip(ids, arr, strict=True)])
            self._bump(g.id, reset=False)

    def switch_model(
        self, gallery: str, model: str, *, drop_old: bool = True, metadata: Mapping[str, Any] | None = None
    ) -> GalleryInfo:
        """Make ``model`` the gallery's model once every face has its embedding; the threshold resets
        (and the gallery's ``metadata`` is replaced when given)."""
        with self.transaction():
            g = self.gallery(gallery)
            counts = self.models(gallery)
            if counts.get(model, 0) != g.faces:
                raise GalleryError(
                    f"only {counts.get(model, 0)} of {g.faces} faces have a {model} embedding: re-embed them all first"
                )
            dim = self._model_dim(g.id, model) or g.dim
            self._q("switch_model", model, dim, g.id)
            if metadata is not None:
                self._q("update_gallery_settings", None, self._json_param(dict(metadata)), g.id)
            if drop_old:
                self._q("delete_other_models", g.id, model)
            self._bump(g.id, reset=True)
            self._on_gallery_deleted(g)  # drops indexes built for the old model
            return self.gallery(gallery)

    # -- consistency -----------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Everything inconsistent in the store, as messages (empty when all is well)."""
        with self.transaction(write=False):
            problems = self._integrity_problems()
            for g in self.galleries():
                for count, what in (
                    (self._q("faces_without_embedding", g.id, g.model)[0][0], f"faces without a {g.model} embedding"),
                    (self._q("embeddings_wrong_dim", g.id, g.model, g.dim)[0][0], "embeddings of the wrong size"),
                    (self._q("faces_wrong_subject", g.id, g.id)[0][0], "faces or embeddings with the wrong subject"),
                    (self._q("orphan_embeddings", g.id)[0][0], "embeddings without a face"),
                ):
                    if count:
                        problems.append(f"gallery {g.name!r}: {count} {what}")
        return problems
