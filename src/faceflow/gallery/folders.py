"""Cluster the faces of a photo folder into persons, incrementally: ``OUT/clusters.json`` and HTML.

``OUT`` keeps each photo's faces and embeddings (``state.npz``), so that a later run analyses only
new or changed photos and adds their faces to the existing clusters
(:func:`faceflow.gallery.cluster.update_clusters`); :mod:`faceflow.gallery.contact_sheet` draws
the pages.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import ConfigError, GalleryError
from faceflow.gallery.cluster import DEFAULT_CLUSTER_THRESHOLD, check_threshold, update_clusters
from faceflow.gallery.contact_sheet import save_thumbnail, write_contact_sheets
from faceflow.gallery.store import model_name
from faceflow.gallery.workflows import ItemFailure, Tick
from faceflow.models.store import sha256_file
from faceflow.recognize import embedder_class

STATE_FILE = "state.npz"


@dataclass
class ClusterOptions:
    """How a photo folder is clustered."""

    threshold: float = DEFAULT_CLUSTER_THRESHOLD
    min_face: float = 32.0
    """Faces whose box is smaller (shorter side, pixels) are left unassigned."""
    min_score: float = 0.0
    """Faces whose quality (or, without a quality stage, detector score) is lower are left unassigned."""
    min_cluster_size: int = 2
    """Clusters with fewer faces are reported as "alone" (they still may grow on a later run)."""

    def __post_init__(self) -> None:
        """Refuse values that cannot mean anything (as ``faceflow gallery cluster`` does), before any work:
        a NaN passes no comparison, so it would cluster everyone together or leave nothing out silently."""
        check_threshold(self.threshold)
        if self.min_cluster_size < 1:
            raise ConfigError(f"the smallest cluster (--min-size) must be at least 1, got {self.min_cluster_size}")
        for flag, value in (("--min-face", self.min_face), ("--min-score", self.min_score)):
            if math.isnan(value):
                raise ConfigError(f"{flag} must be a number, got {value}")


@dataclass
class ClusterSummary:
    """What a clustering run left in its output folder."""

    faces: int
    clusters: int
    unassigned: int
    json_path: str
    html_path: str
    photos: int = 0
    analysed_now: int = 0
    errors: list[ItemFailure] = field(default_factory=list)


@dataclass
class _State:
    model: str
    threshold: float
    faces: list[dict[str, Any]]
    vectors: npt.NDArray[Any]
    cluster_ids: npt.NDArray[Any]
    photos: dict[str, str]

    @classmethod
    def load(cls, out: Path, model: str, dim: int, threshold: float) -> _State:
        path = out / STATE_FILE
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                state = cls(meta["model"], meta["threshold"], meta["faces"], z["vectors"], z["cluster_ids"],
                            meta["photos"])
            if state.model != model:
                raise GalleryError(f"{out} was clustered with {state.model}, not {model}: use another --out")
            if state.threshold != threshold:  # a new threshold: the same faces, clustered afresh
                state.threshold, state.cluster_ids = threshold, np.full(len(state.faces), -1, np.int64)
            return state
        return cls(model, threshold, [], np.zeros((0, dim), np.float32), np.zeros(0, np.int64), {})

    def save(self, out: Path) -> None:
        meta = {"model": self.model, "threshold": self.threshold, "faces": self.faces, "photos": self.photos}
        tmp = out / f".{STATE_FILE}.{os.getpid()}.tmp.npz"
        np.savez(tmp, meta=np.array(json.dumps(meta)), vectors=self.vectors, cluster_ids=self.cluster_ids)
        os.replace(tmp, out / STATE_FILE)

    def drop_photos(self, photos: set[str]) -> None:
        keep = np.array([f["photo"] not in photos for f in self.faces], bool)
        self.faces = [f for f, k in zip(self.faces, keep, strict=True) if k]
        self.vectors, self.cluster_ids = self.vectors[keep], self.cluster_ids[keep]
        for p in photos:
            self.photos.pop(p, None)


def cluster_folder(
    paths: Sequence[Path],
    out: Path,
    analyzer: Any,
    *,
    model: str,
    options: ClusterOptions | None = None,
    tick: Tick | None = None,
    on_photos: Callable[[int], None] | None = None,
) -> ClusterSummary:
    """Cluster the faces of the photos under ``paths`` into persons; write ``out/clusters.json`` and HTML.

    Incremental: ``out`` keeps each photo's faces and embeddings (``state.npz``); a later run analyses
    only new or changed photos and adds their faces to the existing clusters.
    """
    from faceflow.io import iter_image_files

    opts = options or ClusterOptions()
    out.mkdir(parents=True, exist_ok=True)
    embed_name = model_name(model)
    files = [p.resolve() for p in iter_image_files(list(paths))]
    digests = {str(p): sha256_file(p) for p in files if p.is_file()}
    dim = embedder_class(embed_name).dim
    state = _State.load(out, model, dim, opts.threshold)
    state.drop_photos({p for p, d in digests.items() if state.photos.get(p, d) != d})  # changed photos
    todo = [Path(p) for p in digests if p not in state.photos]
    if on_photos:
        on_photos(len(todo))
    new_faces: list[dict[str, Any]] = []
    new_vectors: list[npt.NDArray[Any]] = []
    errors: list[ItemFailure] = []
    for path in todo:
        result, image = analyzer.analyze_file(path)
        if result.error:
            errors.append(ItemFailure(str(path), result.error))
        else:
            state.photos[str(path)] = digests[str(path)]
        for i, face in enumerate(result.faces):
            if embed_name not in face.embeddings or image is None:
                continue
            key = f"{digests[str(path)][:16]}-{i}"
            quality = face.quality_fraction
            small = min(face.width, face.height) < opts.min_face
            reason = "small" if small else ("low quality" if quality < opts.min_score else None)
            thumb = f"faces/{key}.jpg"
            save_thumbnail(image, face, out / thumb)
            new_faces.append({"key": key, "photo": str(path), "box": [round(float(v), 2) for v in face.box],
                              "score": round(face.score, 4), "quality": round(float(quality), 4),
                              "unassigned": reason, "thumb": thumb})
            new_vectors.append(face.embeddings[embed_name])
        if tick:
            tick()
    if new_faces:
        state.faces += new_faces
        state.vectors = np.concatenate([state.vectors, np.stack(new_vectors).astype(np.float32)])
        state.cluster_ids = np.concatenate([state.cluster_ids, np.full(len(new_faces), -1, np.int64)])
    eligible = np.array([f["unassigned"] is None for f in state.faces], bool)
    if eligible.any():
        state.cluster_ids[eligible] = update_clusters(
            state.vectors[eligible], [f["photo"] for f, e in zip(state.faces, eligible, strict=True) if e],
            state.cluster_ids[eligible], opts.threshold)
    state.save(out)
    summary = write_cluster_report(out, state.faces, state.cluster_ids, state.vectors, opts, model)
    summary.photos, summary.analysed_now, summary.errors = len(state.photos), len(todo), errors
    return summary


def order_clusters(labels: npt.NDArray[Any], typicality: npt.NDArray[Any], eligible: npt.NDArray[Any],
                   min_size: int) -> tuple[list[tuple[int, npt.NDArray[np.int64]]], npt.NDArray[np.int64]]:
    """How a clustering is reported (``faceflow cluster`` and ``faceflow gallery cluster``): the clusters
    of at least ``min_size`` eligible rows as ``(label, rows most typical first)``, largest first (ties:
    lower label first), and the eligible rows of the smaller ones ("alone"), ascending."""
    rows = np.flatnonzero(eligible)
    lab = np.asarray(labels, np.int64)[rows]
    order = np.lexsort((rows, lab))
    rows, lab = rows[order], lab[order]
    cut = np.flatnonzero(np.diff(lab)) + 1
    groups = [(int(g[0]), r) for g, r in zip(np.split(lab, cut), np.split(rows, cut), strict=True) if r.size]
    big = [(label, r[np.argsort(-np.asarray(typicality)[r], kind="stable")])
           for label, r in groups if r.size >= min_size]
    big.sort(key=lambda c: (-c[1].size, c[0]))
    alone = [r for _, r in groups if r.size < min_size]
    return big, np.sort(np.concatenate(alone)) if alone else np.zeros(0, np.int64)


def write_cluster_report(out: Path, faces: list[dict[str, Any]], ids: npt.NDArray[Any], vectors: npt.NDArray[Any],
                         opts: ClusterOptions, model: str) -> ClusterSummary:
    """``clusters.json`` plus ``index.html`` and one contact sheet per cluster under ``clusters/``."""
    eligible = np.array([f["unassigned"] is None for f in faces], bool)
    typicality = np.zeros(len(faces), np.float64)  # each face's dot product with its cluster's mean
    if eligible.any():
        _, unit = np.unique(ids[eligible], return_inverse=True)
        x = np.asarray(vectors, np.float64)[eligible]
        means = np.zeros((int(unit.max()) + 1, x.shape[1]))
        np.add.at(means, unit, x)
        means /= np.bincount(unit)[:, None]
        typicality[eligible] = np.einsum("nd,nd->n", x, means[unit])
    big, alone = order_clusters(ids, typicality, eligible, opts.min_cluster_size)
    clusters = [{"id": cid, "size": int(rows.size), "faces": [faces[r] for r in rows]} for cid, rows in big]
    lone = set(alone.tolist())
    unassigned = [dict(faces[i], unassigned=faces[i]["unassigned"] or "alone")
                  for i in range(len(faces)) if faces[i]["unassigned"] is not None or i in lone]
    doc = {"model": model, "threshold": opts.threshold, "faces": len(faces), "clusters": clusters,
           "unassigned": unassigned}
    (out / "clusters.json").write_text(json.dumps(doc, indent=1) + "\n")
    write_contact_sheets(out, clusters, unassigned, len(faces))
    return ClusterSummary(len(faces), len(clusters), len(unassigned), str(out / "clusters.json"),
                          str(out / "index.html"))
