"""1:N search over a gallery: exact (float32 BLAS), ANN above a size, open-set decisions.

* **Exact** (default below :data:`DEFAULT_ANN_THRESHOLD` faces): one float32 matrix product per batch
  of queries against every embedding of the gallery (kept in memory, reloaded when the gallery's
  revision changes).
* **ANN** (at or above the threshold): an HNSW graph gives :data:`DEFAULT_CANDIDATES` candidate faces
  per query, which are then re-scored exactly in float32, so that reported similarities are always
  exact cosines. SQLite galleries use a `usearch <https://github.com/unum-cloud/usearch>`_ index kept
  in memory and saved beside the database (extended in place while the gallery only grows);
  PostgreSQL galleries use pgvector's HNSW index inside the database.
* **Subjects**: a subject's score aggregates its faces' similarities: ``"max"`` (default) is the best
  matching face, robust to a subject enrolled from varied photos; ``"mean"`` is the mean similarity
  over all of the subject's faces, which rewards consistent matches and dampens one lucky face.
* **Open set**: the best subject is returned as known only when its score reaches the threshold:
  the gallery's own (set by :meth:`Searcher.calibrate` or by hand) or else the model's verification
  threshold from :data:`faceflow.recognize.CALIBRATION` (calibrated on LFW at a false-match rate of
  1e-3 per comparison; with N subjects the false-positive identification rate grows towards
  ``1 - (1 - FMR)^N``, which is why :meth:`Searcher.calibrate` exists).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from faceflow.errors import ConfigError, GalleryError
from faceflow.gallery.store import GalleryInfo, GalleryStore, VectorSet, model_name
from faceflow.types import FloatArray

Aggregate = Literal["max", "mean"]
DEFAULT_ANN_THRESHOLD = 50_000
"""Galleries with at least this many faces are searched through an ANN index."""
DEFAULT_CANDIDATES = 100
"""Candidate faces per query taken from the ANN index and re-scored exactly."""
HNSW_CONNECTIVITY = 32
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 200
"""Breadth of the HNSW search (at least the number of candidates). On 60k random 128-d vectors with
a planted match at cosine 0.5-0.6 (the hardest same-person case), connectivity 16 and breadth 100
found it in 79 % of queries, connectivity 32 and breadth 200 in 99 % (``benchmarks/bench_search.py``)."""
INDEX_DTYPE = "i8"
"""Vectors in the HNSW graph as 8-bit integers (unit vectors x 127). On 200k random 128-d vectors
(connectivity 32, breadth 200) against half floats: build 119 s instead of 204 s, p50 query 1.24
instead of 1.66 ms, the same recall after exact re-scoring (near-duplicates 1.0, same-person-like
0.975 vs 0.97)."""
SERIAL_START = 10_000
"""The first faces of a graph are inserted by one thread: concurrent inserts into a near-empty graph
leave it poorly linked (3,000 random 16-d vectors built on two threads: 4 builds in 15 missed a
planted match at cosine 0.95 among 50 candidates; on one thread, none did)."""
_EXACT_CHUNK = 1 << 26  # query rows x gallery rows per matrix product (256 MB of float32 scores)


def as_queries(queries: npt.ArrayLike, dim: int) -> FloatArray:
    """Queries as unit-norm float32 rows ``(Q, dim)``."""
    q = np.asarray(queries, dtype=np.float32)
    q = q.reshape(1, -1) if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != dim:
        raise GalleryError(f"queries must have {dim} values each, got shape {np.shape(queries)}")
    return np.ascontiguousarray(q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def exact_topk(vectors: FloatArray, queries: FloatArray, k: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Rows of ``vectors`` with the ``k`` largest dot products with each query, best first, and those products."""
    n = vectors.shape[0]
    k = min(k, n)
    rows = np.zeros((queries.shape[0], k), np.int64)
    scores = np.zeros((queries.shape[0], k), np.float32)
    if k == 0:
        return rows, scores
    step = max(1, _EXACT_CHUNK // max(n, 1))
    for i in range(0, queries.shape[0], step):
        sims = queries[i:i + step] @ vectors.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), sims.shape)
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        rows[i:i + step] = np.take_along_axis(part, order, axis=1)
        scores[i:i + step] = np.take_along_axis(top, order, axis=1)
    return rows, scores


def calibrate_threshold(nonmated_scores: npt.ArrayLike, fpir: float) -> float:
    """The lowest threshold at which at most ``fpir`` of the non-mated searches score at or above it.

    ``nonmated_scores`` are the best scores of searches whose person is not in the gallery; a search
    is a false positive when its best score is >= the threshold.
    """
    s = np.sort(np.asarray(nonmated_scores, dtype=np.float64).reshape(-1))[::-1]
    if s.size == 0:
        raise ValueError("no non-mated scores to calibrate on")
    if not 0.0 <= fpir < 1.0:
        raise ValueError(f"fpir must be in [0, 1), got {fpir}")
    allowed = min(int(np.floor(fpir * s.size + 1e-9)), s.size - 1)  # this many may be false positives
    # Everything strictly above s[allowed] passes; ties with it must not, so go just above it.
    return float(np.nextafter(s[allowed], np.inf))


def default_threshold(model: str) -> float | None:
    """The model's LFW verification threshold (FMR 1e-3 per comparison), if faceflow knows the model."""
    from faceflow.recognize import CALIBRATION

    cal = CALIBRATION.get(model_name(model))
    return None if cal is None else float(cal.threshold)


@dataclass(frozen=True)
class Candidate:
    """A subject and its aggregated similarity to the query; ``face_id`` is its best-matching face."""

    subject_id: int
    subject: str
    similarity: float
    face_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "similarity": round(self.similarity, 6), "face_id": self.face_id}


@dataclass(frozen=True)
class Identification:
    """An open-set answer: the best subject if its score reaches ``threshold``, else unknown."""

    known: bool
    threshold: float
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)

    @property
    def subject(self) -> str | None:
        """The identified subject's name, or ``None`` for an unknown face."""
        return self.candidates[0].subject if self.known else None

    @property
    def similarity(self) -> float | None:
        """The best candidate's score (``None`` when the gallery is empty)."""
        return self.candidates[0].similarity if self.candidates else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject, "known": self.known,
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "threshold": self.threshold, "candidates": [c.to_dict() for c in self.candidates],
        }


class UsearchIndex:
    """An HNSW index (usearch, inner product) keyed by face id, saved beside the store with its stamp.

    ``dtype`` is how the graph stores vectors: :data:`INDEX_DTYPE` by default, since the candidates'
    scores are re-computed exactly afterwards anyway.
    """

    def __init__(self, dim: int, *, dtype: str = INDEX_DTYPE, connectivity: int = HNSW_CONNECTIVITY,
                 expansion_add: int = HNSW_EXPANSION_ADD, threads: int = 0) -> None:
        from faceflow.extras import require

        index_class = require("usearch.index", "the ANN index of big SQLite galleries").Index
        self.index = index_class(ndim=dim, metric="ip", dtype=dtype, connectivity=connectivity,
                           expansion_add=expansion_add)
        self.threads = threads
        self.stamp: dict[str, Any] = {}

    def add(self, face_ids: npt.NDArray[np.int64], vectors: FloatArray) -> None:
        """Insert faces; while the graph is under :data:`SERIAL_START` faces, one thread at a time."""
        keys = face_ids.astype(np.uint64)
        head = min(len(keys), max(0, SERIAL_START - len(self.index)))
        if head:
            self.index.add(keys[:head], vectors[:head], threads=1)
        if head < len(keys):
            self.index.add(keys[head:], vectors[head:], threads=self.threads)

    def search(self, queries: FloatArray, k: int) -> npt.NDArray[np.int64]:
        """Candidate face ids ``(Q, k)``, -1 where fewer were found."""
        self.index.expansion_search = max(k, HNSW_EXPANSION_SEARCH)
        m = self.index.search(queries, k, threads=self.threads)
        batches = [(m.keys[i], m.counts[i]) for i in range(len(m))] if hasattr(m, "counts") else [(m.keys, len(m))]
        out = np.full((queries.shape[0], k), -1, np.int64)
        for row, (keys, count) in zip(out, batches, strict=True):
            row[:count] = np.asarray(keys[:count], dtype=np.int64)
        return out

    def __len__(self) -> int:
        return len(self.index)

    @property
    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)

    def save(self, path: Path) -> None:
        """Write the index and its stamp atomically (other processes may read them meanwhile)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self.index.save(str(tmp))
        os.replace(tmp, path)
        meta = path.with_suffix(".json")
        tmp_meta = meta.with_name(f"{meta.name}.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(self.stamp))
        os.replace(tmp_meta, meta)

    def load(self, path: Path) -> bool:
        """Load a saved index; False when there is none or it cannot be read."""
        try:
            stamp = json.loads(path.with_suffix(".json").read_text())
            self.index.load(str(path))
        except (OSError, ValueError, RuntimeError):
            return False
        self.stamp = stamp
        return True


class Searcher:
    """Searches one gallery of a store; reloads what it keeps in memory when the gallery changes.

    ``ann``: ``None`` switches to ANN at ``ann_threshold`` faces, ``True``/``False`` forces it.
    ``threshold`` overrides the gallery's open-set threshold.

    Safe to share between threads: each public call holds the searcher's lock from the revision
    check to the answer, so that no search sees vectors, subject offsets, index and names of two
    different revisions (a reload in one thread swaps them while another would be reading).
    Calls on one searcher therefore run one at a time (the exact search's matrix product is itself
    multi-threaded by BLAS); give each thread its own searcher (they may share the store) for
    searches in parallel.
    """

    def __init__(
        self,
        store: GalleryStore,
        gallery: str,
        *,
        aggregate: Aggregate = "max",
        ann: bool | None = None,
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
        candidates: int = DEFAULT_CANDIDATES,
        threshold: float | None = None,
        index_dtype: str = INDEX_DTYPE,
        threads: int = 0,
    ) -> None:
        if aggregate not in ("max", "mean"):
            raise ConfigError(f"aggregate must be 'max' or 'mean', got {aggregate!r}")
        self.store, self.name, self.aggregate = store, gallery, aggregate
        self.ann, self.ann_threshold, self.candidates = ann, ann_threshold, candidates
        self.threshold_override, self.index_dtype, self.threads = threshold, index_dtype, threads
        self.info: GalleryInfo = store.gallery(gallery)
        self._loaded = (-1, -1)  # (gallery id, revision) in memory: a gallery made again has a new id
        self._set: VectorSet | None = None
        self._starts: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._row_of: dict[int, int] = {}
        self._index: UsearchIndex | None = None
        self._names: dict[int, str] = {}
        self._lock = threading.RLock()

    # -- state -----------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``"exact"``, ``"usearch"`` or ``"pgvector"`` for the gallery as it was last loaded."""
        use_ann = self.ann if self.ann is not None else self.info.faces >= self.ann_threshold
        if not use_ann:
            return "exact"
        return "pgvector" if self.store.has_native_ann() else "usearch"

    @property
    def threshold(self) -> float:
        """The open-set threshold in force (override, gallery setting, model default)."""
        for value in (self.threshold_override, self.info.threshold, default_threshold(self.info.model)):
            if value is not None:
                return float(value)
        raise ConfigError(f"no threshold known for model {self.info.model}: calibrate the gallery or pass one")

    def refresh(self) -> None:
        """Re-read the gallery; reload vectors and extend or rebuild the index if it changed."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        head = self.store.gallery(self.name, counts=False)
        if (head.id, head.revision) == self._loaded:
            return
        self.info = self.store.gallery(self.name)
        mode = self.mode
        if mode == "pgvector":
            self.store.ensure_ann_index(self.name)
            self._set = None
        else:
            self._load_vectors()
            if mode == "usearch":
                self._sync_index()
        self._names = {}
        self._loaded = (self.info.id, self.info.revision)

    def _load_vectors(self) -> None:
        vs = self.store.vectors(self.name)
        self._set = vs
        change = np.flatnonzero(np.diff(vs.subject_ids)) + 1
        self._starts = np.concatenate([[0], change]).astype(np.int64) if len(vs) else np.zeros(0, np.int64)
        self._row_of = {}

    def _row_lookup(self) -> dict[int, int]:
        if not self._row_of and self._set is not None:
            self._row_of = {int(f): i for i, f in enumerate(self._set.face_ids)}
        return self._row_of

    def _index_path(self) -> Path | None:
        folder = self.store.index_dir()
        if folder is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.info.model)
        return folder / f"g{self.info.id}.{safe}.{self.index_dtype}.usearch"

    def _sync_index(self) -> None:
        """Bring the usearch index up to the loaded vectors: reuse, extend, or rebuild it."""
        assert self._set is not None
        g, vs, path = self.info, self._set, self._index_path()
        expected = {"gallery": g.id, "created_at": g.created_at, "model": g.model}
        idx = self._index
        if idx is None and path is not None and path.exists():
            idx = UsearchIndex(g.dim, dtype=self.index_dtype, threads=self.threads)
            idx = idx if idx.load(path) else None
        usable = (
            idx is not None
            and {k: idx.stamp.get(k) for k in expected} == expected
            and idx.stamp.get("revision", -1) >= g.reset_revision
        )
        if not usable:
            idx = UsearchIndex(g.dim, dtype=self.index_dtype, threads=self.threads)
            idx.stamp = {**expected, "revision": -1, "max_face_id": 0}
        assert idx is not None
        new = vs.face_ids > int(idx.stamp["max_face_id"])
        changed = bool(new.any()) or idx.stamp["revision"] != g.revision
        idx.add(vs.face_ids[new], vs.vectors[new])
        if len(idx) != len(vs):  # faces came and went in ways the stamp cannot tell: start over
            idx = UsearchIndex(g.dim, dtype=self.index_dtype, threads=self.threads)
            idx.add(vs.face_ids, vs.vectors)
            changed = True
        idx.stamp = {**expected, "revision": g.revision, "max_face_id": int(vs.face_ids.max(initial=0))}
        self._index = idx
        if changed and path is not None:
            with contextlib.suppress(OSError):
                idx.save(path)

    def _name(self, subject_ids: Sequence[int]) -> dict[int, str]:
        missing = [s for s in subject_ids if s not in self._names]
        if missing:
            self._names.update(self.store.subject_names(self.name, missing))
        return self._names

    # -- search ----------------------------------------------------------------------------------
    def identify(self, queries: npt.ArrayLike, *, top: int = 5) -> list[Identification]:
        """Open-set identification of each query embedding: the ``top`` subjects and the decision."""
        with self._lock:
            return self._identify(queries, top)

    def _identify(self, queries: npt.ArrayLike, top: int) -> list[Identification]:
        self._refresh()
        q = as_queries(queries, self.info.dim)
        threshold = self.threshold
        if self.info.faces == 0:
            return [Identification(False, threshold) for _ in range(q.shape[0])]
        ranked = self._rank_exact(q, top) if self.mode == "exact" else self._rank_ann(q, top)
        names = self._name([s for row in ranked for s, _, _ in row])
        out = []
        for row in ranked:
            cands = tuple(Candidate(s, names.get(s, "?"), float(sim), f) for s, sim, f in row)
            out.append(Identification(bool(cands) and cands[0].similarity >= threshold, threshold, cands))
        return out

    def _rank_exact(self, q: FloatArray, top: int) -> list[list[tuple[int, float, int]]]:
        """(subject, score, best face) per query, best first, from every face's exact score."""
        vs = self._set
        assert vs is not None
        starts, n_subjects = self._starts, len(self._starts)
        counts = np.diff(np.append(starts, len(vs)))
        top = min(top, n_subjects)
        step = max(1, _EXACT_CHUNK // max(len(vs), 1))
        out: list[list[tuple[int, float, int]]] = []
        for i in range(0, q.shape[0], step):
            sims = q[i:i + step] @ vs.vectors.T
            if self.aggregate == "max":
                subj = np.maximum.reduceat(sims, starts, axis=1)
            else:
                subj = np.add.reduceat(sims, starts, axis=1) / counts
            part = np.argpartition(-subj, top - 1, axis=1)[:, :top] if top < n_subjects else (
                np.broadcast_to(np.arange(n_subjects), subj.shape))
            for r in range(sims.shape[0]):
                chosen = part[r][np.argsort(-subj[r, part[r]], kind="stable")]
                row = []
                for j in chosen:
                    a, b = starts[j], starts[j] + counts[j]
                    best = a + int(np.argmax(sims[r, a:b]))
                    row.append((int(vs.subject_ids[a]), float(subj[r, j]), int(vs.face_ids[best])))
                out.append(row)
        return out

    def _candidates(self, q: FloatArray) -> list[VectorSet]:
        """ANN candidate faces of each query with their exact vectors."""
        if self.mode == "pgvector":
            return self.store.ann_search(self.info, q, self.candidates, ef=max(self.candidates, HNSW_EXPANSION_SEARCH))
        assert self._index is not None and self._set is not None
        keys = self._index.search(q, self.candidates)
        rows_of, vs = self._row_lookup(), self._set
        out = []
        for row in keys:
            rows = np.array([rows_of[int(k)] for k in row if k >= 0 and int(k) in rows_of], dtype=np.int64)
            out.append(VectorSet(vs.face_ids[rows], vs.subject_ids[rows], vs.vectors[rows]))
        return out

    def _rank_ann(self, q: FloatArray, top: int) -> list[list[tuple[int, float, int]]]:
        """(subject, score, best face) per query from ANN candidates re-scored exactly."""
        out = []
        for query, cand in zip(q, self._candidates(q), strict=True):
            sims = cand.vectors @ query
            best: dict[int, tuple[float, int]] = {}
            for s, sim, f in zip(cand.subject_ids.tolist(), sims.tolist(), cand.face_ids.tolist(), strict=True):
                if s not in best or sim > best[s][0]:
                    best[s] = (sim, f)
            if self.aggregate == "mean" and best:
                members = self._subject_members(list(best))
                best = {s: (float(np.mean(members[s].vectors @ query)), f) for s, (_, f) in best.items()
                        if s in members}
            ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:top]
            out.append([(s, sim, f) for s, (sim, f) in ranked])
        return out

    def _subject_members(self, subject_ids: list[int]) -> dict[int, VectorSet]:
        """All faces of the given subjects (from memory, or from the database for pgvector)."""
        if self._set is not None:
            vs, starts = self._set, self._starts
            idx = np.searchsorted(vs.subject_ids[starts], subject_ids)
            ends = np.append(starts[1:], len(vs))
            return {s: VectorSet(vs.face_ids[starts[i]:ends[i]], vs.subject_ids[starts[i]:ends[i]],
                                 vs.vectors[starts[i]:ends[i]]) for s, i in zip(subject_ids, idx, strict=True)}
        vs = self.store.vectors(self.name, subject_ids=subject_ids)
        out = {}
        for s in np.unique(vs.subject_ids):
            m = vs.subject_ids == s
            out[int(s)] = VectorSet(vs.face_ids[m], vs.subject_ids[m], vs.vectors[m])
        return out

    def search_faces(self, queries: npt.ArrayLike, k: int = 10) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """The ``k`` most similar faces (ids, exact scores), best first, in the searcher's mode; -1 pads."""
        with self._lock:
            return self._search_faces(queries, k)

    def _search_faces(self, queries: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
        self._refresh()
        q = as_queries(queries, self.info.dim)
        ids = np.full((q.shape[0], k), -1, np.int64)
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        if self.mode == "exact":
            assert self._set is not None
            rows, sc = exact_topk(self._set.vectors, q, k)
            ids[:, :rows.shape[1]], scores[:, :rows.shape[1]] = self._set.face_ids[rows], sc
            return ids, scores
        for i, (query, cand) in enumerate(zip(q, self._candidates(q), strict=True)):
            sims = cand.vectors @ query
            order = np.argsort(-sims, kind="stable")[:k]
            ids[i, :len(order)], scores[i, :len(order)] = cand.face_ids[order], sims[order]
        return ids, scores

    def calibrate(self, fpir: float = 0.01, *, max_probes: int = 2000, seed: int = 0) -> float:
        """Open-set threshold at ``fpir`` from the gallery itself, stored in the gallery.

        Each probe is one face of a subject searched against the *other* subjects (the gallery
        with that subject left out), which gives the best scores of non-mated searches; needs
        subjects to be distinct people and at least ``ceil(1 / fpir)`` of them for the rate to mean
        anything. Uses exact scores over all faces, with the searcher's aggregate.
        """
        with self._lock:
            return self._calibrate(fpir, max_probes, seed)

    def _calibrate(self, fpir: float, max_probes: int, seed: int) -> float:
        self._refresh()
        if self._set is None:
            self._load_vectors()
        vs, starts = self._set, self._starts
        assert vs is not None
        n = len(starts)
        if n < 2:
            raise GalleryError("calibration needs at least two subjects")
        picks = np.random.default_rng(seed).permutation(n)[:max_probes]
        probes = vs.vectors[starts[picks]]
        sims = probes @ vs.vectors.T
        counts = np.diff(np.append(starts, len(vs)))
        subj = np.maximum.reduceat(sims, starts, axis=1) if self.aggregate == "max" else (
            np.add.reduceat(sims, starts, axis=1) / counts)
        subj[np.arange(len(picks)), picks] = -np.inf
        threshold = calibrate_threshold(subj.max(axis=1), fpir)
        note = (f"calibrated on the gallery at FPIR {fpir:g} ({len(picks)} leave-one-subject-out searches, "
                f"{self.aggregate})")
        self.info = self.store.set_threshold(self.name, threshold, note)
        return threshold
