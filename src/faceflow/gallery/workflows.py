"""Photo workflows over a gallery: create one for a model, enrol photos, identify photos, re-embed.

Each photo is analysed with ``detect`` + ``embed``. A gallery is bound to the identity of one
embedder's vectors (:class:`faceflow.recognize.EmbeddingIdentity`): :func:`analyzer_for` builds the
analyzer that makes exactly those vectors, or raises :class:`~faceflow.errors.ModelMismatch`.
Batch workflows record a :class:`~faceflow.errors.FaceflowError` per photo in their typed report
and go on; errors about the whole job (unknown gallery, store down) are raised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import (
    ConfigError,
    FaceflowError,
    GalleryError,
    LowQuality,
    ModelMismatch,
    MultipleFaces,
    NoFaceFound,
    PresentationAttack,
)
from faceflow.gallery.search import Aggregate, Identification, Searcher
from faceflow.gallery.store import GalleryFace, GalleryInfo, GalleryStore, check_name, model_name
from faceflow.models.store import sha256_file
from faceflow.recognize import embedder_class, embedding_identity
from faceflow.types import Face, ImageResult, largest_face

Tick = Callable[[], None]
"""Called once per photo done (progress bars)."""

DEFAULT_GALLERY_MODEL = "fused"
"""Galleries embed with both models (score-level fusion, mirrored faces averaged): in 1:N search the
false matches grow with the gallery, and on LFW's identification protocol the fused model misses
4.56 % of mated searches at FPIR 1 % where SFace alone misses 6.64 % (rank-1 98.74 vs 98.36 %;
``faceflow eval identification``). The fused model's weights were fitted on LFW's View 2 pairs
(:data:`faceflow.recognize.FUSION_WEIGHTS`), images of the same people, so its LFW figure is not fully
held out; the FNIR is read at the threshold that gives FPIR 1 % on LFW's own non-mated searches."""


def make_analyzer(embedder: str = DEFAULT_GALLERY_MODEL, *, flip: bool | None = None, detector: str = "yunet",
                  quality: bool = False, liveness: bool = False, **options: Any) -> Any:
    """An :class:`~faceflow.pipeline.Analyzer` that detects faces and embeds them with ``embedder``
    (and assesses their quality with ``quality``, their liveness with ``liveness``); ``options`` go to
    the Analyzer as they are (``runtime=`` to share another's loaded models, ``max_pixels=``)."""
    from faceflow.pipeline import Analyzer

    cls = embedder_class(embedder)
    stages = ("detect", "embed", *(("quality",) if quality else ()), *(("liveness",) if liveness else ()))
    return Analyzer(stages=stages, detector=detector, embedders=(embedder,),
                    flip=cls.default_flip if flip is None else flip, **options)


def create_gallery(store: GalleryStore, name: str, embedder: str = DEFAULT_GALLERY_MODEL, *, flip: bool | None = None,
                   threshold: float | None = None, exist_ok: bool = False) -> GalleryInfo:
    """A new gallery for ``embedder``'s vectors (``flip=None``: the embedder's default).

    ``exist_ok=True`` returns the gallery if it exists already (whatever its model; see
    :func:`analyzer_for`), also when another process creates it at the same moment.
    """
    identity = embedding_identity(embedder, flip=flip)
    return store.create_gallery(name, identity.key, identity.dim, threshold=threshold,
                                metadata={"embedder": embedder, "flip": identity.flip}, exist_ok=exist_ok)


def analyzer_for(gallery: GalleryInfo, detector: str = "yunet", *, quality: bool = False,
                 liveness: bool = False, **options: Any) -> Any:
    """The analyzer whose embeddings match the gallery's model; :class:`ModelMismatch` if there is none."""
    meta = gallery.metadata
    embedder = str(meta.get("embedder", model_name(gallery.model)))
    flip = bool(meta.get("flip", False))
    try:
        made = embedding_identity(embedder, flip=flip).key
    except ConfigError:
        made = None
    if made != gallery.model:
        can = f"it makes {made}" if made else f"it has no {embedder!r} model"
        raise ModelMismatch(f"gallery {gallery.name!r} holds {gallery.model} embeddings, which this faceflow "
                            f"cannot make ({can}): re-embed it (faceflow gallery reembed)")
    return make_analyzer(embedder, flip=flip, detector=detector, quality=quality, liveness=liveness, **options)


def _embedding(face: Face, gallery: GalleryInfo) -> npt.NDArray[Any]:
    name = model_name(gallery.model)
    if name not in face.embeddings:
        raise ModelMismatch(f"the face has no {name} embedding (run the embed stage with {name})")
    return face.embeddings[name]


@dataclass(frozen=True)
class ItemFailure:
    """One photo (or stored face) a workflow could not handle, and why."""

    path: str
    reason: str
    face_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "reason": self.reason}
        if self.face_id is not None:
            out["face_id"] = self.face_id
        return out


# -- enrol -------------------------------------------------------------------------------------------


@dataclass
class EnrolReport:
    """What an enrolment did: photos seen, faces stored, each photo that failed, and notes."""

    photos: int = 0
    enrolled: int = 0
    face_ids: list[int] = field(default_factory=list)
    """Ids of the photos' faces in the gallery (stored now, or already there), in the order of the photos."""
    failed: list[ItemFailure] = field(default_factory=list)
    notes: list[ItemFailure] = field(default_factory=list)
    """Photos enrolled with a remark (e.g. the largest of several faces, as asked)."""


def enrol_face(result: ImageResult, *, largest: bool = False, min_quality: float | None = None,
               live_only: bool = False) -> Face:
    """The one face of an analysed photo to enrol.

    A photo with several faces is refused (:class:`MultipleFaces`) unless ``largest`` asks for the
    largest one: enrolling a face nobody chose would file a bystander under the subject's name. With
    ``min_quality`` (a unified quality score, 0-100; the analyser must run the ``quality`` stage) a
    face scoring lower is refused (:class:`LowQuality`, naming its weakest components). With
    ``live_only`` (the analyser must run the ``liveness`` stage) a face judged a presentation attack is
    refused (:class:`PresentationAttack`, with its score and threshold).
    """
    if result.error:
        raise FaceflowError(result.error)
    face = largest_face(result.faces)
    if face is None:
        raise NoFaceFound(result.path)
    if len(result.faces) > 1 and not largest:
        raise MultipleFaces(len(result.faces), result.path, "crop the photo, or ask for the largest face: --largest")
    if min_quality is not None:
        q = face.quality
        if q is None or q.unified is None:
            raise ConfigError("a minimum quality needs the quality stage in the analyser")
        if q.unified < min_quality:
            weakest = ", ".join(f"{n} {q.components[n].score:.0f}" for n in q.failing(50.0)[:3])
            raise LowQuality(q.unified, min_quality, result.path, weakest)
    if live_only:
        if face.liveness is None:
            raise ConfigError("refusing spoofs needs the liveness stage in the analyser")
        if not face.liveness.live:
            raise PresentationAttack(face.liveness.score, face.liveness.threshold, face.liveness.model, result.path)
    return face


@dataclass(frozen=True)
class Photo:
    """A photo given as bytes (an upload) instead of a path: ``name`` labels it in reports.

    Its face is stored with no ``source`` (``name`` goes into the face's metadata as ``upload``), so
    that nothing later opens a client-chosen name as a path (a re-embedding reports it as sourceless).
    """

    name: str
    data: bytes = field(repr=False)


def enroll(
    store: GalleryStore,
    gallery: str,
    items: Iterable[tuple[str, Path | Photo]],
    analyzer: Any,
    *,
    largest: bool = False,
    batch: int = 64,
    tick: Tick | None = None,
    min_quality: float | None = None,
    live_only: bool = False,
) -> EnrolReport:
    """Enrol the face of each ``(subject name, photo)`` (a path or a :class:`Photo`); one transaction
    per ``batch`` photos.

    A photo fails on its own (bad image, no face, several faces without ``largest``, a face under
    ``min_quality`` (see :func:`enrol_face`), a subject name
    :func:`~faceflow.gallery.store.check_name` refuses); the others are enrolled. A photo whose bytes
    its subject holds already is not stored again (:meth:`GalleryStore.add_faces_once`): its face id
    is reported with a note, so that an enrolment retried gives the same answer and no duplicate.
    """
    g = store.gallery(gallery, counts=False)
    report = EnrolReport()
    pending: list[GalleryFace] = []
    labels: list[str] = []

    def flush() -> None:
        if pending:
            ids, held = store.add_faces_once(gallery, pending, model=g.model)
            report.enrolled += held.count(False)
            report.face_ids.extend(ids)
            report.notes.extend(ItemFailure(label, f"already enrolled for this subject (face {fid})")
                                for label, fid, seen in zip(labels, ids, held, strict=True) if seen)
            pending.clear()
            labels.clear()

    for name, item in items:
        report.photos += 1
        label = item.name if isinstance(item, Photo) else str(item)
        try:
            subject = check_name(name)
            if isinstance(item, Photo):
                result, _ = analyzer.analyze_source(item.data, label)
            else:
                result, _ = analyzer.analyze_file(item)
            face = enrol_face(result, largest=largest, min_quality=min_quality, live_only=live_only)
        except FaceflowError as exc:
            report.failed.append(ItemFailure(label, str(exc)))
        else:
            if len(result.faces) > 1:
                report.notes.append(ItemFailure(label, f"{len(result.faces)} faces; the largest enrolled"))
            metadata: dict[str, Any] = {"detector": face.detector}
            if isinstance(item, Photo):
                metadata["upload"] = item.name
            pending.append(GalleryFace(
                subject, _embedding(face, g), box=tuple(float(v) for v in face.box),  # type: ignore[arg-type]
                quality=face.quality_fraction, source=None if isinstance(item, Photo) else label,
                source_sha256=hashlib.sha256(item.data).hexdigest() if isinstance(item, Photo)
                else sha256_file(Path(item)), metadata=metadata,
            ))
            labels.append(label)
            if len(pending) >= batch:
                flush()
        if tick:
            tick()
    flush()
    return report


# -- identify ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoIdentification:
    """One photo's faces with the open-set answer for each (or the error that stopped the photo)."""

    result: ImageResult
    answers: tuple[Identification, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The photo as ``faces.jsonl`` writes it, each face with its answer and candidates."""
        record = self.result.to_dict()
        for out, answer in zip(record["faces"], self.answers, strict=False):
            out.update(answer.to_dict())
        record["error"] = self.error
        return record


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
) -> Iterator[PhotoIdentification]:
    """One :class:`PhotoIdentification` per photo, in order."""
    searcher = Searcher(store, gallery, threshold=threshold, aggregate=aggregate)
    for path in paths:
        result, _ = analyzer.analyze_file(path)
        if tick:
            tick()
        yield identify_result(searcher, result, top=top)


def identify_result(searcher: Searcher, result: ImageResult, *, top: int = 5,
                    strict: bool = False) -> PhotoIdentification:
    """The open-set answers for the faces of one analysed photo (its analyser must make the searched
    gallery's embeddings); a search error is recorded on the answer, as :func:`identify` does, or with
    ``strict`` raised as it came (the service answers it by its type: 409 for another model, 503 for a
    store that is down)."""
    answers: list[Identification] = []
    error = result.error
    if result.faces:
        try:
            answers = searcher.identify(np.stack([_embedding(f, searcher.info) for f in result.faces]), top=top)
        except FaceflowError as exc:
            if strict:
                raise
            error = str(exc)
    return PhotoIdentification(result, tuple(answers), error)


# -- re-embedding ------------------------------------------------------------------------------------


@dataclass
class ReembedReport:
    """What a re-embedding did: faces re-embedded, those that failed, and whether the gallery switched."""

    model: str
    reembedded: int = 0
    failed: list[ItemFailure] = field(default_factory=list)
    switched: bool = False


def reembed(
    store: GalleryStore, gallery: str, embedder: str, *, flip: bool | None = None, batch: int = 256,
    tick: Tick | None = None,
) -> ReembedReport:
    """Re-embed every face from its source photo with another model, then switch the gallery to it.

    Each stored face is found again in its photo (the detected face overlapping its box most) and
    embedded with ``embedder``. The switch happens only when every face got a new embedding;
    otherwise the gallery keeps its model and the report lists the faces that failed (re-run after
    fixing them, or delete them). Until the switch, searches keep using the old model.
    """
    from faceflow.detect.base import iou_matrix

    identity = embedding_identity(embedder, flip=flip)
    g = store.gallery(gallery)
    if identity.key == g.model:
        raise GalleryError(f"gallery {gallery!r} already holds {identity.key} embeddings")
    analyzer = make_analyzer(embedder, flip=identity.flip)
    report = ReembedReport(identity.key)
    done = {f.id for f in store.faces(gallery, embeddings=True, model=identity.key) if f.embedding is not None}
    pending: dict[int, npt.NDArray[Any]] = {}

    def flush() -> None:
        store.put_embeddings(gallery, identity.key, pending)
        report.reembedded += len(pending)
        pending.clear()

    for face in store.faces(gallery):
        fid, box = int(face.id or 0), face.box
        if fid in done:
            continue
        result = analyzer.analyze_file(face.source)[0] if face.source else None
        if result is None or result.error or not result.faces:
            reason = "no source photo" if result is None else result.error or "no face found"
            report.failed.append(ItemFailure(str(face.source), reason, fid))
        else:
            overlaps = iou_matrix(box, np.stack([f.box for f in result.faces]))[0] if box else None
            best = result.faces[int(np.argmax(overlaps))] if overlaps is not None else largest_face(result.faces)
            assert best is not None
            pending[fid] = best.embeddings[embedder]
        if len(pending) >= batch:
            flush()
        if tick:
            tick()
    flush()
    if not report.failed:
        store.switch_model(gallery, identity.key, metadata=dict(g.metadata, embedder=embedder, flip=identity.flip))
        report.switched = True
    return report


# -- idempotent batches (the Ray engine) ---------------------------------------------------------------


@dataclass
class BatchEnrolReport(EnrolReport):
    """:class:`EnrolReport` plus the photos skipped because the gallery already held them."""

    skipped: int = 0


def enroll_new(
    store: GalleryStore,
    gallery: str,
    items: Iterable[tuple[str, Path]],
    analyzer: Any,
    *,
    largest: bool = False,
    min_quality: float | None = None,
) -> BatchEnrolReport:
    """Enrol one batch of ``(subject name, photo)`` in one transaction, skipping each photo whose
    source path and content the gallery holds already (checked before analysing, and again under
    the gallery's lock when writing: :meth:`GalleryStore.add_new_faces`), so that running a batch
    twice, or two workers racing on one photo, stores its face once."""
    g = store.gallery(gallery, counts=False)
    items = list(items)
    report = BatchEnrolReport(photos=len(items))
    digests: dict[str, str | None] = {}
    for _, path in items:
        try:
            digests[str(path)] = sha256_file(Path(path))
        except OSError:
            digests[str(path)] = None  # unreadable: analyze_file names the problem
    held = store.enrolled_sources(gallery, [str(p) for _, p in items])
    pending: list[GalleryFace] = []
    for name, path in items:
        if (str(path), digests[str(path)]) in held:
            report.skipped += 1
            continue
        try:
            subject = check_name(name)
            result, _ = analyzer.analyze_file(path)
            face = enrol_face(result, largest=largest, min_quality=min_quality)
        except FaceflowError as exc:
            report.failed.append(ItemFailure(str(path), str(exc)))
            continue
        if len(result.faces) > 1:
            report.notes.append(ItemFailure(str(path), f"{len(result.faces)} faces; the largest enrolled"))
        pending.append(GalleryFace(
            subject, _embedding(face, g), box=tuple(float(v) for v in face.box),  # type: ignore[arg-type]
            quality=face.quality_fraction, source=str(path), source_sha256=digests[str(path)],
            metadata={"detector": face.detector},
        ))
    ids, skipped = store.add_new_faces(gallery, pending, model=g.model)
    report.enrolled += len(ids)
    report.skipped += skipped
    return report
