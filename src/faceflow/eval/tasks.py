"""The protocols wired to faceflow's own models: what ``faceflow eval TASK`` runs.

Each ``eval_*`` function builds the model callables a runner needs from faceflow's detectors and
stages, with a result cache keyed by the protocol, the models (by their registered sha256), the
settings and faceflow's version, so a rerun after a change in the scoring is fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from faceflow.anonymize import CROWD_FACTOR
from faceflow.detect import DetectorOptions, create_detector
from faceflow.eval.cache import ResultCache, predictor_key, timed
from faceflow.eval.identification import EmbedFn
from faceflow.eval.lfw import run_lfw
from faceflow.eval.utkface import run_utkface
from faceflow.eval.w300 import run_300w
from faceflow.eval.wider import boxes_from_faces, run_wider
from faceflow.io import load_image
from faceflow.models.registry import MODELS
from faceflow.types import Face, Image, nearest_face

if TYPE_CHECKING:
    from faceflow.eval.anonymize import WiderPredictions

WIDER_SCORE_THRESHOLD = 0.05
"""Detections kept for WIDER FACE AP: low, so the precision-recall curve is traced in full (the
same setting PEERS.md used for YuNet and CenterFace)."""


def cache_for(protocol: str, models: Sequence[str], settings: str, enabled: bool = True) -> ResultCache | None:
    """A result cache keyed by :func:`~faceflow.eval.cache.predictor_key`: it changes whenever a model
    file (``models``: registry names, by their files' sha256), a setting, the model-facing source,
    :data:`~faceflow.eval.cache.PREDICTOR_VERSION` or a runtime library's version does."""
    if not enabled:
        return None
    weights = {f"{m}/{f.name}": f.sha256 for m in models if m in MODELS for f in MODELS[m].files}
    # every name goes into the settings too: the modes ("fast", "accurate") are not registry entries
    return ResultCache(predictor_key(protocol, weights, f"{','.join(models)}|{settings}"))


def centre_face(image: Image, fraction: float = 0.5) -> Face:
    """A square box of ``fraction`` of the shorter side at the image centre: the documented fallback
    when a detector finds nothing in a tight, pre-aligned crop (LFW)."""
    h, w = image.shape[:2]
    side = fraction * min(h, w)
    cx, cy = w / 2, h / 2
    return Face(box=np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32), score=0.0)


def eval_lfw(root: Path | str, *, model: str = "sface", detector: str = "yunet", flip: bool | None = None,
             progress: bool = True, use_cache: bool = True) -> dict[str, Any]:
    """LFW View 2 with faceflow's detector and embedder; the face nearest the centre is used, a
    centre box when none is found. ``flip=None`` is the model's default.

    ``model="fused"`` embeds each image with both parts and fits the fusion weights per fold on the
    nine training folds (:class:`faceflow.eval.fusion.FoldFusionScorer`), never on the test fold.
    """
    from faceflow.eval.fusion import FoldFusionScorer
    from faceflow.recognize import FusedEmbedder, create_embedder

    det = create_detector(detector)
    embedder = create_embedder(model, flip=flip)
    encode, scorer, parts = embedder.embed, None, []
    if isinstance(embedder, FusedEmbedder):
        encode, scorer = embedder.embed_parts, FoldFusionScorer(embedder.part_dims)
        parts = [p.name for p in embedder.parts]

    def embed(path: Path) -> npt.NDArray[np.float32] | None:
        image = load_image(path)
        faces = det.detect(image)
        if not faces:
            return None
        h, w = image.shape[:2]
        face = nearest_face(faces, (w / 2, h / 2))
        assert face is not None
        return np.asarray(encode(image, [face])[0], np.float32)

    def fallback(path: Path) -> npt.NDArray[np.float32]:
        image = load_image(path)
        return np.asarray(encode(image, [centre_face(image)])[0], np.float32)

    weights_of = [{"dlib": "dlib_resnet"}.get(p, p) for p in parts]  # registry names: their hashes key the cache
    cache = cache_for("lfw", [detector, model, *weights_of], f"flip={embedder.flip}", use_cache)
    result = run_lfw(root, embed, fallback, progress=progress, cache=cache, scorer=scorer)
    result.update(protocol="lfw", model=model, detector=detector, flip=embedder.flip)
    if scorer is not None and scorer.weights is not None:
        result["fusion_weights"] = dict(zip(parts, scorer.weights.T.tolist(), strict=True))
    return result


def eval_wider(root: Path | str, *, detector: str = "yunet", score_threshold: float = WIDER_SCORE_THRESHOLD,
               progress: bool = True, use_cache: bool = True) -> dict[str, Any]:
    """The official WIDER FACE evaluation of one detector on the images present under ``root``."""
    det = create_detector(detector, DetectorOptions(score_threshold=score_threshold))

    def detect(image: Image) -> npt.NDArray[np.float64]:
        return boxes_from_faces(det.detect(image))

    cache = cache_for("wider", [detector], f"score>={score_threshold}", use_cache)
    result = run_wider(root, detect, progress=progress, cache=cache)
    result.update(protocol="wider", detector=detector, score_threshold=score_threshold)
    return result


def eval_300w(root: Path | str, *, detector: str = "yunet", landmarks: str | None = None,
              progress: bool = True, use_cache: bool = True) -> dict[str, Any]:
    """68-point NME on 300-W-style folders (``.pts`` beside each image); ``landmarks=None`` is the
    landmarks stage's default source."""
    from faceflow.landmarks import SOURCE_MODELS, LandmarksOptions
    from faceflow.pipeline import Analyzer

    landmarks = landmarks or LandmarksOptions().source

    analyzer = Analyzer(stages=("detect", "landmarks"), detector=detector, landmarks=landmarks)

    def predict(image: Image, gt: npt.NDArray[np.float64]) -> npt.NDArray[np.float32] | None:
        faces = analyzer.analyze_array(image)
        if not faces:
            return None
        face = nearest_face(faces, gt.mean(axis=0).tolist())
        return None if face is None else face.landmarks68

    models = [detector, *SOURCE_MODELS.get(landmarks, ())]
    cache = cache_for("300w", models, f"landmarks={landmarks}", use_cache)
    result = run_300w(root, predict, progress=progress, cache=cache)
    result.update(protocol="300w", detector=detector, landmarks=landmarks)
    return result


def eval_utkface(root: Path | str, *, detector: str = "yunet", age_gender: str = "cydral",
                 split: Path | str | None = None, progress: bool = True, use_cache: bool = True) -> dict[str, Any]:
    """Age MAE, CS(5) and gender accuracy on UTKFace-named images (face nearest the centre), with
    age and gender from ``age_gender`` (see :class:`~faceflow.pipeline.AnalyzerOptions`)."""
    from faceflow.pipeline import Analyzer

    analyzer = Analyzer(stages=("detect", "attributes"), detector=detector, age_gender=age_gender)

    def predict(path: Path) -> tuple[float | None, str | None]:
        image = load_image(path)
        faces = analyzer.analyze_array(image)
        if not faces:
            return None, None
        h, w = image.shape[:2]
        face = nearest_face(faces, (w / 2, h / 2))
        assert face is not None
        age = None if face.age is None else float(face.age.value)
        gender = None if face.gender is None else str(face.gender.value)
        return age, gender

    models, settings = [detector, "age", "gender", "dlib_shape5"], ""
    if age_gender == "heads":
        from faceflow.attribute_heads import HEADS_SHA256

        models, settings = [*models, "sface", "dlib_resnet"], f"heads={HEADS_SHA256[:12]}"
    cache = cache_for("utkface", models, settings, use_cache)
    result = run_utkface(root, predict, split=split, progress=progress, cache=cache)
    result.update(protocol="utkface", detector=detector, age_gender=age_gender, split=str(split) if split else None)
    return result


def lfw_gallery_embedder(model: str, flip: bool | None = None, *, use_cache: bool = True) -> EmbedFn:
    """``embed_fn(path)`` for the LFW gallery protocols (``faceflow eval identification|clustering``):
    the embedding of the face nearest the image centre as a gallery stores it (the gallery's analyzer,
    ``model`` with its default flip unless ``flip`` is given), or ``None`` when no face is found.

    Results are cached per image content under ``$FACEFLOW_HOME/eval-cache`` (both protocols, and
    ``training/fit_cluster_threshold.py``, share them), keyed like the other protocols.
    """
    from faceflow.gallery.workflows import make_analyzer
    from faceflow.recognize import embedding_identity

    identity = embedding_identity(model, flip=flip)
    analyzer = make_analyzer(model, flip=identity.flip)
    cache = cache_for("gallery-eval", ["yunet"], f"{identity.key} face-nearest-centre", use_cache)

    def compute(path: Path) -> Any:
        image = load_image(path)
        h, w = image.shape[:2]
        face = nearest_face(analyzer.analyze_array(image), (w / 2, h / 2))
        return None if face is None else face.embeddings.get(model)

    def embed(path: Path) -> Any:
        return compute(path) if cache is None else cache.call(path, lambda: timed(compute, path))[0]

    return embed


ANONYMIZE_SWEEP = (0.05, 0.06, 0.07, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5)
"""Thresholds scored by ``faceflow eval anonymize``."""
ANONYMIZE_FLOOR = round(ANONYMIZE_SWEEP[0] * CROWD_FACTOR, 4)
"""Detections are computed once down to this score: the crowd rule's floor at the lowest threshold."""


def anonymize_detect_fn(recall: str = "default", detector: str | None = None,
                        floor: float = ANONYMIZE_FLOOR) -> tuple[Any, list[str]]:
    """``detect_fn(image) -> (N, 5)`` rows as photo anonymisation finds faces (its detector, and with
    ``recall="high"`` its second detector, united), at ``floor``; and the detector names (cache key)."""
    from faceflow.anonymize import HIGH_RECALL, IMAGE_DETECTOR, union_faces

    names = [detector or IMAGE_DETECTOR] + ([HIGH_RECALL["image"][0]] if recall == "high" else [])
    dets = [create_detector(n, DetectorOptions(score_threshold=floor)) for n in names]

    def detect(image: Image) -> npt.NDArray[np.float64]:
        faces = dets[0].detect(image)
        for d in dets[1:]:
            faces = union_faces(faces, d.detect(image))
        return boxes_from_faces(faces)

    return detect, names


def eval_anonymize(root: Path | str, *, recall: str = "default", detector: str | None = None,
                   thresholds: Sequence[float] = ANONYMIZE_SWEEP, half: str = "report", shape: str = "ellipse",
                   margin: float = 0.25, progress: bool = True, use_cache: bool = True) -> dict[str, Any]:
    """WIDER coverage of photo anonymisation at each of ``thresholds`` on one ``half`` of the events
    (:func:`faceflow.eval.anonymize.half_of`)."""
    from faceflow.eval.anonymize import run_anonymize_wider

    detect, names = anonymize_detect_fn(recall, detector)
    result = run_anonymize_wider(root, detect, thresholds, half=half, shape=shape, margin=margin,
                                 progress=progress, cache=_anonymize_cache(names, use_cache), crowd=True)
    result.update(detectors=names, recall=recall)
    return result


def _anonymize_cache(names: Sequence[str], use_cache: bool) -> ResultCache | None:
    return cache_for("wider-anonymize", names, f"score>={ANONYMIZE_FLOOR}|{'+'.join(names)}", use_cache)


def anonymize_wider_predictions(root: Path | str, *, half: str = "tune", recall: str = "default",
                                detector: str | None = None, progress: bool = True,
                                use_cache: bool = True) -> WiderPredictions:
    """Photo anonymisation's detections (down to :data:`ANONYMIZE_FLOOR`) on one ``half`` of the WIDER
    events, from the same cache as :func:`eval_anonymize`: for tuning what is covered
    (``training/tune_anonymize.py``)."""
    from faceflow.eval.anonymize import predict_wider

    detect, names = anonymize_detect_fn(recall, detector)
    return predict_wider(root, detect, half=half, progress=progress, cache=_anonymize_cache(names, use_cache))


def eval_anonymize_reid(root: Path | str, *, methods: Sequence[str] = ("blur", "pixelate", "solid", "mask"),
                        limit: int = 300, skip: int = 0, progress: bool = True) -> dict[str, Any]:
    """Re-identification after anonymisation on LFW: ``limit`` distinct images of View 2's ``pairs.txt``
    (in file order) after the first ``skip``. Each image's face nearest the centre (found by photo anonymisation's
    detector) is embedded by ``sface`` in the original and, with the same box and five points (the
    aligner of an attacker who knows where the face was), in each method's anonymised copy."""
    from faceflow.anonymize import Anonymizer
    from faceflow.eval._common import track as _track
    from faceflow.eval.anonymize import reidentification
    from faceflow.eval.lfw import read_pairs
    from faceflow.recognize import CALIBRATION, create_embedder

    root = Path(root)
    seen: dict[Path, None] = {}
    for pair in read_pairs(root / "pairs.txt"):
        for p in (pair.path1, pair.path2):
            seen.setdefault(p, None)
    paths = list(seen)[skip:skip + limit]
    embedder = create_embedder("sface")
    anonymizers = {m: Anonymizer(method=m) for m in methods}
    first = anonymizers[methods[0]]
    items: dict[str, list[tuple[Image, Image, Any]]] = {m: [] for m in methods}
    no_face = 0
    for path in _track(paths, "LFW re-identification", progress):
        image = load_image(path)
        faces = [f for f in first.detect(image) if f.score >= first.threshold]
        h, w = image.shape[:2]
        face = nearest_face(faces, (w / 2, h / 2))
        if face is None:
            no_face += 1
            continue
        for m, a in anonymizers.items():
            # mask needs the mesh, which only its own analyser runs; the others cover the same faces
            covered = a.anonymize_array(image).image if m == "mask" else a.annotator.annotate(image, faces)
            items[m].append((image, covered, face))

    def embed(image: Image, face: Any) -> Any:
        return np.asarray(embedder.embed(image, [face])[0], np.float32)

    threshold = CALIBRATION["sface"].threshold
    out: dict[str, Any] = {"protocol": "lfw-reid", "images": len(paths), "skip": skip, "no_face": no_face,
                           "model": "sface",
                           "fmr": CALIBRATION["sface"].fmr}
    baseline = [(img, img, face) for img, _, face in items[methods[0]]]
    out["original_vs_itself"] = reidentification(baseline[:20], embed, threshold)
    for m in methods:
        out[m] = reidentification(items[m], embed, threshold)
    return out
