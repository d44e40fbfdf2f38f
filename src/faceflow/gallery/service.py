"""Galleries over the analysis pipeline: enrol photos, identify the faces of photos, cluster a folder.

Each photo is analysed with ``detect`` + ``embed``; enrolment takes the photo's largest face. The
embedding model's key is ``"<name>@<first 12 hex of the weights' sha256>"`` (for ``fused``, of its
parts' and their weights), with ``+flip`` when mirrored crops are averaged in, so that a gallery
refuses faces from any other model or weights.
Batch drivers here record a :class:`~faceflow.errors.FaceflowError` per photo and go on.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import FaceflowError, GalleryError
from faceflow.gallery.cluster import DEFAULT_CLUSTER_THRESHOLD, update_clusters
from faceflow.gallery.search import Aggregate, Searcher
from faceflow.gallery.store import GalleryFace, GalleryInfo, GalleryStore, model_id
from faceflow.models.store import sha256_file
from faceflow.types import Face, Image

Tick = Callable[[], None]
"""Called once per photo done (progress bars)."""

_WEIGHTS = {"sface": "sface", "dlib": "dlib_resnet"}  # embedder -> registry entry of its original weights


def resolve_flip(embedder: str, flip: bool | None) -> bool:
    """``flip``, or the embedder's own default when ``None``; unknown embedders raise GalleryError."""
    from faceflow.recognize import EMBEDDERS

    if embedder not in EMBEDDERS:
        raise GalleryError(f"unknown recognition model {embedder!r}; choose one of: {', '.join(EMBEDDERS)}")
    return EMBEDDERS[embedder].default_flip if flip is None else flip


DEFAULT_GALLERY_MODEL = "fused"
"""Galleries embed with both models (score-level fusion, mirrored faces averaged): in 1:N search the
false matches grow with the gallery, and on LFW's identification protocol the fused model misses
4.56 % of mated searches at FPIR 1 % where SFace alone misses 6.64 % (rank-1 98.74 vs 98.36 %;
``faceflow eval identification``). The fused model's weights were fitted on LFW's View 2 pairs
(:data:`faceflow.recognize.FUSION_WEIGHTS`), images of the same people, so its LFW figure is not fully
held out; the FNIR is read at the threshold that gives FPIR 1 % on LFW's own non-mated searches."""


def embedder_model_id(name: str = "sface", *, flip: bool | None = None) -> str:
    """The store key of an embedder's vectors, e.g. ``"sface@d1b9fcf732a4"``."""
    from faceflow.models import registry

    use_flip = resolve_flip(name, flip)
    if name in _WEIGHTS:
        version = registry.get(_WEIGHTS[name]).files[0].sha256[:12]
    else:  # fused: its parts' weights and the fusion weights
        from faceflow.recognize import FUSION_WEIGHTS

        text = json.dumps({m: [embedder_model_id(m, flip=False), w] for m, w in sorted(FUSION_WEIGHTS.items())})
        version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return model_id(name, version + ("+flip" if use_flip else ""))


def make_analyzer(embedder: str = DEFAULT_GALLERY_MODEL, *, flip: bool | None = None, detector: str = "yunet") -> Any:
    """An :class:`~faceflow.pipeline.Analyzer` that detects faces and embeds them with ``embedder``."""
    from faceflow.pipeline import Analyzer

    return Analyzer(stages=("detect", "embed"), detector=detector, embedders=(embedder,),
                    flip=resolve_flip(embedder, flip))


def create_gallery(store: GalleryStore, name: str, embedder: str = DEFAULT_GALLERY_MODEL, *, flip: bool | None = None,
                   threshold: float | None = None) -> GalleryInfo:
    """A new gallery for ``embedder``'s embeddings (``flip=None``: the embedder's default)."""
    from faceflow.recognize import EMBEDDERS

    use_flip = resolve_flip(embedder, flip)
    return store.create_gallery(name, embedder_model_id(embedder, flip=use_flip), EMBEDDERS[embedder].dim,
                                threshold=threshold, metadata={"embedder": embedder, "flip": use_flip})


def analyzer_for(gallery: GalleryInfo, detector: str = "yunet") -> Any:
    """The analyzer whose embeddings match the gallery's model."""
    meta = gallery.metadata
    embedder = str(meta.get("embedder", gallery.model.split("@", 1)[0]))
    flip = bool(meta.get("flip", False))
    if embedder_model_id(embedder, flip=flip) != gallery.model:
        raise GalleryError(f"gallery {gallery.name!r} holds {gallery.model} embeddings, which this faceflow "
                           f"cannot make (it has {embedder_model_id(embedder, flip=flip)}): re-embed it")
    return make_analyzer(embedder, flip=flip, detector=detector)


def largest(faces: Sequence[Face]) -> Face | None:
    """The face with the largest box, or ``None``."""
    return max(faces, key=lambda f: f.width * f.height, default=None)


def _embedding(face: Face, gallery: GalleryInfo) -> npt.NDArray[Any]:
    name = gallery.model.split("@", 1)[0]
    if name not in face.embeddings:
        raise GalleryError(f"the face has no {name} embedding (run the embed stage with {name})")
    return face.embeddings[name]


# -- enrol -------------------------------------------------------------------------------------------


@dataclass
class EnrolReport:
    """What an enrolment did: faces stored, and each photo skipped with the reason."""

    enrolled: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)


def enroll(
    store: GalleryStore,
    gallery: str,
    items: Iterable[tuple[str, Path]],
    analyzer: Any,
    *,
    batch: int = 64,
    tick: Tick | None = None,
) -> EnrolReport:
    """Enrol the largest face of each ``(subject name, photo)``; one transaction per ``batch`` photos."""
    g = store.gallery(gallery, counts=False)
    report = EnrolReport()
    pending: list[GalleryFace] = []

    def flush() -> None:
        if pending:
            report.enrolled += len(store.add_faces(gallery, pending, model=g.model))
            pending.clear()

    for name, path in items:
        result, _ = analyzer.analyze_file(path)
        face = largest(result.faces)
        if result.error or face is None:
            report.skipped.append({"path": str(path), "reason": result.error or "no face found"})
        else:
            if len(result.faces) > 1:
                report.notes.append({"path": str(path), "note": f"{len(result.faces)} faces; the largest enrolled"})
            pending.append(GalleryFace(
                name, _embedding(face, g), box=tuple(float(v) for v in face.box),  # type: ignore[arg-type]
                quality=face.quality if face.quality is not None else face.score, source=str(path),
                source_sha256=sha256_file(Path(path)), metadata={"detector": face.detector},
            ))
            if len(pending) >= batch:
                flush()
        if tick:
            tick()
    flush()
    return report


# -- identify ----------------------------------------------------------------------------------------


def identify(
    store: GalleryStore,
    gallery: str,
    paths: Iterable[Path],
    analyzer: Any,
    *,
    top: int = 5,
    threshold: float | None = None,
    aggregate: Aggregate = "max",
    tick: Tick | None = None,
) -> Iterator[dict[str, Any]]:
    """One JSON-ready record per photo: its faces, each with the open-set answer and candidates."""
    searcher = Searcher(store, gallery, threshold=threshold, aggregate=aggregate)
    for path in paths:
        result, _ = analyzer.analyze_file(path)
        record = result.to_dict()
        if result.faces:
            try:
                answers = searcher.identify(np.stack([_embedding(f, searcher.info) for f in result.faces]), top=top)
                for out, answer in zip(record["faces"], answers, strict=True):
                    out.update(answer.to_dict())
            except FaceflowError as exc:
                record["error"] = str(exc)
        if tick:
            tick()
        yield record


# -- cluster a folder --------------------------------------------------------------------------------

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


def _thumbnail(image: Image, face: Face, path: Path) -> None:
    from PIL import Image as PILImage

    from faceflow.align import crop_box

    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(crop_box(image, face.box, 1.3, 112)).save(path, quality=88)


def cluster_folder(
    paths: Sequence[Path],
    out: Path,
    analyzer: Any,
    *,
    model: str,
    options: ClusterOptions | None = None,
    tick: Tick | None = None,
    on_photos: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Cluster the faces of the photos under ``paths`` into persons; write ``out/clusters.json`` and HTML.

    Incremental: ``out`` keeps each photo's faces and embeddings (``state.npz``); a later run analyses
    only new or changed photos and adds their faces to the existing clusters.
    """
    from faceflow.io import iter_image_files

    opts = options or ClusterOptions()
    out.mkdir(parents=True, exist_ok=True)
    embed_name = model.split("@", 1)[0]
    files = [p.resolve() for p in iter_image_files(list(paths))]
    digests = {str(p): sha256_file(p) for p in files if p.is_file()}
    from faceflow.recognize import EMBEDDERS

    dim = EMBEDDERS[embed_name].dim if embed_name in EMBEDDERS else 128
    state = _State.load(out, model, dim, opts.threshold)
    state.drop_photos({p for p, d in digests.items() if state.photos.get(p, d) != d})  # changed photos
    todo = [Path(p) for p in digests if p not in state.photos]
    if on_photos:
        on_photos(len(todo))
    new_faces: list[dict[str, Any]] = []
    new_vectors: list[npt.NDArray[Any]] = []
    errors = []
    for path in todo:
        result, image = analyzer.analyze_file(path)
        if result.error:
            errors.append({"path": str(path), "error": result.error})
        else:
            state.photos[str(path)] = digests[str(path)]
        for i, face in enumerate(result.faces):
            if embed_name not in face.embeddings or image is None:
                continue
            key = f"{digests[str(path)][:16]}-{i}"
            quality = face.quality if face.quality is not None else face.score
            small = min(face.width, face.height) < opts.min_face
            reason = "small" if small else ("low quality" if quality < opts.min_score else None)
            thumb = f"faces/{key}.jpg"
            _thumbnail(image, face, out / thumb)
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
    summary.update(photos=len(state.photos), analysed_now=len(todo), errors=errors)
    return summary


def write_cluster_report(out: Path, faces: list[dict[str, Any]], ids: npt.NDArray[Any], vectors: npt.NDArray[Any],
                         opts: ClusterOptions, model: str) -> dict[str, Any]:
    """``clusters.json`` plus ``index.html`` and one contact sheet per cluster under ``clusters/``."""
    members: dict[int, list[int]] = {}
    for i, cid in enumerate(ids.tolist()):
        if faces[i]["unassigned"] is None:
            members.setdefault(int(cid), []).append(i)
    clusters: list[dict[str, Any]] = []
    alone: list[int] = []
    for cid, rows in sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(rows) < opts.min_cluster_size:
            alone += rows
            continue
        centre = vectors[rows].mean(axis=0)
        order = sorted(rows, key=lambda r: -float(vectors[r] @ centre))  # most typical face first
        clusters.append({"id": cid, "size": len(rows), "faces": [faces[r] for r in order]})
    lone = set(alone)
    unassigned = [dict(faces[i], unassigned=faces[i]["unassigned"] or "alone")
                  for i in range(len(faces)) if faces[i]["unassigned"] is not None or i in lone]
    doc = {"model": model, "threshold": opts.threshold, "faces": len(faces), "clusters": clusters,
           "unassigned": unassigned}
    (out / "clusters.json").write_text(json.dumps(doc, indent=1) + "\n")
    sheets = out / "clusters"
    sheets.mkdir(exist_ok=True)
    for old in sheets.glob("*.html"):
        old.unlink()
    cards = []
    for c in clusters:
        page = f"clusters/{c['id']}.html"
        cards.append(f'<a class="card" href="{page}"><img src="{c["faces"][0]["thumb"]}">'
                     f"<span>#{c['id']} · {c['size']}</span></a>")
        _write_sheet(out / page, f"Cluster {c['id']} ({c['size']} faces)", c["faces"], "../")
    _write_sheet(out / "unassigned.html", f"Unassigned ({len(unassigned)} faces)", unassigned, "")
    _write_html(out / "index.html", f"{len(clusters)} persons in {len(faces)} faces",
                "".join(cards) + f'<p><a href="unassigned.html">{len(unassigned)} faces unassigned</a></p>')
    return {"faces": len(faces), "clusters": len(clusters), "unassigned": len(unassigned),
            "json": str(out / "clusters.json"), "html": str(out / "index.html")}


_CSS = ("body{font-family:sans-serif;margin:1em}a.card,figure{display:inline-block;margin:4px;text-align:center;"
        "font-size:11px;width:120px;vertical-align:top;word-break:break-all}img{width:112px;height:112px;"
        "object-fit:cover;border-radius:4px}")


def _write_html(path: Path, title: str, body: str) -> None:
    path.write_text(f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{_CSS}</style><h1>{html.escape(title)}</h1>{body}\n")


def _write_sheet(path: Path, title: str, faces: list[dict[str, Any]], up: str) -> None:
    figures = "".join(
        f'<figure><a href="{html.escape(Path(f["photo"]).as_uri())}"><img src="{up}{f["thumb"]}"></a>'
        f"<figcaption>{html.escape(Path(f['photo']).name)}"
        f"{' · ' + html.escape(f['unassigned']) if f.get('unassigned') else ''}</figcaption></figure>"
        for f in faces)
    _write_html(path, title, figures)



# -- re-embedding ------------------------------------------------------------------------------------


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def reembed(
    store: GalleryStore, gallery: str, embedder: str, *, flip: bool | None = None, batch: int = 256,
    tick: Tick | None = None,
) -> EnrolReport:
    """Re-embed every face from its source photo with another model, then switch the gallery to it.

    Each stored face is found again in its photo (the detected face overlapping its box most) and
    embedded with ``embedder``. The switch happens only when every face got a new embedding;
    otherwise the gallery keeps its model and the report lists the faces that failed (re-run after
    fixing them, or delete them). Until the switch, searches keep using the old model.
    """
    flip = resolve_flip(embedder, flip)
    new_model = embedder_model_id(embedder, flip=flip)
    g = store.gallery(gallery)
    if new_model == g.model:
        raise GalleryError(f"gallery {gallery!r} already holds {new_model} embeddings")
    analyzer = make_analyzer(embedder, flip=flip)
    report = EnrolReport()
    done = {f.id for f in store.faces(gallery, embeddings=True, model=new_model) if f.embedding is not None}
    pending: dict[int, npt.NDArray[Any]] = {}
    for face in store.faces(gallery):
        fid, box = int(face.id or 0), face.box
        if fid in done:
            continue
        result, _ = analyzer.analyze_file(face.source) if face.source else (None, None)
        if result is None or result.error or not result.faces:
            reason = "no source photo" if result is None else result.error or "no face found"
            report.skipped.append({"path": str(face.source), "reason": f"face {fid}: {reason}"})
        else:
            best = max(result.faces, key=lambda f: _iou(f.box.tolist(), box) if box else f.width)
            pending[fid] = best.embeddings[embedder]
        if len(pending) >= batch:
            store.put_embeddings(gallery, new_model, pending)
            report.enrolled += len(pending)
            pending = {}
        if tick:
            tick()
    store.put_embeddings(gallery, new_model, pending)
    report.enrolled += len(pending)
    if not report.skipped:
        store.switch_model(gallery, new_model, metadata=dict(g.metadata, embedder=embedder, flip=flip))
    return report
