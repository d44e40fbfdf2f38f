"""Face image quality on LFW: per-image observations, utility labels, and error-versus-reject curves.

* :func:`lfw_observations` runs the detector (YuNet), the mesh, the recognition model (SFace) and the
  expression model once over every image ``pairs.txt`` uses, the face nearest the centre (a centre
  box when none is found), and caches one packed vector per image, so the quality measures, the
  labels and the curves can be recomputed in seconds.
* :func:`utility_labels`: CR-FIQA's idea on the embeddings themselves: the cosine to the image's own
  identity centre (leaving the image out) minus the cosine to the nearest other identity's centre.
* :func:`error_versus_reject`: pair quality = the lower of the two images'; FNMR at the threshold
  giving FMR = 1e-3 on all pairs, kept fixed while the worst pairs are rejected (0 to 30 %), and the
  variant that re-derives the threshold on the pairs kept at each step; the area under each curve up
  to 20 % rejected (trapezoids over the fractions, divided by nothing: FNMR x fraction units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.eval._common import run_item, track
from faceflow.eval.cache import ResultCache
from faceflow.eval.lfw import Pair, cosine_scores, read_pairs
from faceflow.io import load_image
from faceflow.models.registry import MODELS
from faceflow.types import EXPRESSIONS, Expression, Face, nearest_face

F64 = npt.NDArray[np.float64]

EMBED_DIM = 128
_LAYOUT: tuple[tuple[str, int], ...] = (
    ("detected", 1), ("n_faces", 1), ("other_area", 1), ("score", 1), ("box", 4), ("landmarks5", 10),
    ("mesh", 468 * 3), ("embedding", EMBED_DIM), ("expression", len(EXPRESSIONS)), ("embedding_norm", 1),
)
"""The packed per-image observation: where each part sits in the cached vector."""
_SLICES: dict[str, slice] = {}
_start = 0
for _name, _size in _LAYOUT:
    _SLICES[_name] = slice(_start, _start + _size)
    _start += _size
OBSERVATION_SIZE = _start

OBSERVATION_MODELS = ("yunet", "face_mesh", "sface", "expression")


@dataclass
class Observation:
    """One LFW image as the quality evaluation sees it: the face used, how many faces the image has
    (and the area of the largest other one relative to it), its embedding and the norm of that
    embedding before normalisation."""

    face: Face
    detected: bool
    n_faces: int
    other_area: float
    embedding: npt.NDArray[np.float32]
    embedding_norm: float

    def pack(self) -> npt.NDArray[np.float32]:
        out = np.zeros(OBSERVATION_SIZE, np.float32)
        f = self.face
        out[_SLICES["detected"]] = float(self.detected)
        out[_SLICES["n_faces"]] = self.n_faces
        out[_SLICES["other_area"]] = self.other_area
        out[_SLICES["score"]] = f.score
        out[_SLICES["box"]] = f.box
        assert f.landmarks5 is not None and f.mesh is not None and f.expression is not None
        out[_SLICES["landmarks5"]] = f.landmarks5.ravel()
        out[_SLICES["mesh"]] = f.mesh.ravel()
        out[_SLICES["embedding"]] = self.embedding
        out[_SLICES["expression"]] = [f.expression.scores[e] for e in EXPRESSIONS]
        out[_SLICES["embedding_norm"]] = self.embedding_norm
        return out

    @classmethod
    def unpack(cls, v: npt.ArrayLike) -> Observation:
        a = np.asarray(v, np.float32)
        scores = a[_SLICES["expression"]]
        detected = bool(a[_SLICES["detected"]][0] > 0.5)
        face = Face(box=a[_SLICES["box"]], score=float(a[_SLICES["score"]][0]),
                    detector="yunet" if detected else "centre",
                    landmarks5=a[_SLICES["landmarks5"]].reshape(5, 2), mesh=a[_SLICES["mesh"]].reshape(468, 3),
                    expression=Expression(EXPRESSIONS[int(np.argmax(scores))],
                                          {e: float(s) for e, s in zip(EXPRESSIONS, scores, strict=True)}))
        return cls(face, detected, int(a[_SLICES["n_faces"]][0]), float(a[_SLICES["other_area"]][0]),
                   a[_SLICES["embedding"]].copy(), float(a[_SLICES["embedding_norm"]][0]))


def other_face_area(faces: Sequence[Face], face: Face) -> float:
    """The area of the largest face other than ``face``, relative to ``face``'s (0 when alone)."""
    others = [f.width * f.height for f in faces if f is not face]
    return max(others, default=0.0) / max(face.width * face.height, 1e-6)


def observe_lfw_image(path: Path, analyzer: Any, embedder: Any, expression: Any, mesh: Any) -> Observation:
    """Detect, keep the face nearest the centre (a centre box when none), mesh, embed, expression."""
    from faceflow.eval.tasks import centre_face
    from faceflow.recognize import box_landmarks5

    image = load_image(path)
    faces = analyzer.analyze_array(image)
    h, w = image.shape[:2]
    face = nearest_face(faces, (w / 2, h / 2))
    detected = face is not None
    if face is None:
        face = centre_face(image)
        face.detector = "centre"
        face.landmarks5 = box_landmarks5(face.box)
        face.mesh = mesh.predict(image, face)[0]
    if face.landmarks5 is None:
        face.landmarks5 = box_landmarks5(face.box)
    unit, norms = embedder.embed_crops_with_norms(embedder.crops(image, [face]))
    expression.run(image, [face])
    return Observation(face, detected, len(faces), other_face_area(faces, face) if detected else 0.0,
                       np.asarray(unit[0], np.float32), float(norms[0]))


def lfw_observations(root: Path | str, *, progress: bool = True, use_cache: bool = True,
                     limit: int | None = None) -> tuple[list[Path], dict[Path, Observation], list[dict[str, str]]]:
    """Every image ``<root>/pairs.txt`` uses (the first ``limit`` when given) with its
    :class:`Observation` (images that failed to decode are left out and listed in the errors)."""
    from faceflow import __version__
    from faceflow.attributes import ExpressionStage
    from faceflow.landmarks import MeshStage
    from faceflow.pipeline import Analyzer
    from faceflow.recognize import create_embedder

    root = Path(root)
    pairs = read_pairs(root / "pairs.txt")
    paths = list(dict.fromkeys(p for pair in pairs for p in (pair.path1, pair.path2)))
    if limit is not None:
        paths = paths[:limit]
    analyzer = Analyzer(stages=("detect", "mesh"), detector="yunet")
    embedder = create_embedder("sface", runtime=analyzer.runtime)
    expression = ExpressionStage(runtime=analyzer.runtime)
    mesh = MeshStage(runtime=analyzer.runtime)
    hashes = ",".join(f.sha256[:12] for m in OBSERVATION_MODELS for f in MODELS[m].files)
    # The key names the models, the settings and faceflow's version, not the quality code: the
    # observations do not depend on it, and the measures are recomputed from them on every run.
    key = f"quality-observations v2|{hashes}|flip={embedder.flip}|faceflow {__version__}"
    cache = ResultCache(key) if use_cache else None
    errors: list[dict[str, str]] = []
    out: dict[Path, Observation] = {}

    def observe(path: Path) -> npt.NDArray[np.float32]:
        return observe_lfw_image(path, analyzer, embedder, expression, mesh).pack()

    for path in track(paths, "LFW observations", progress):
        value, _ = run_item(path, observe, cache, errors)
        if value is not None:
            out[path] = Observation.unpack(value)
    analyzer.close()
    return paths, out, errors


# -- utility labels --------------------------------------------------------------------------------


def identity_of(path: Path) -> str:
    """LFW's person name: the image's folder."""
    return path.parent.name


def utility_labels(embeddings: F64, identities: Sequence[str]) -> F64:
    """CR-FIQA-style utility of each image: cosine to its own identity's centre (the mean of the
    identity's *other* images) minus the highest cosine to another identity's centre (all its images).
    Images whose identity has no other image get NaN (no own centre to compare with)."""
    e = np.asarray(embeddings, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    names = sorted(set(identities))
    index = {n: i for i, n in enumerate(names)}
    ids = np.array([index[n] for n in identities])
    sums = np.zeros((len(names), e.shape[1]))
    np.add.at(sums, ids, e)
    counts = np.bincount(ids, minlength=len(names)).astype(np.float64)
    centres = sums / counts[:, None]
    centres_n = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    own_sum = sums[ids] - e
    own_count = counts[ids] - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        own = own_sum / own_count[:, None]
        own = own / np.linalg.norm(own, axis=1, keepdims=True)
    ccs = np.sum(e * own, axis=1)
    sims = e @ centres_n.T
    sims[np.arange(len(e)), ids] = -np.inf
    nnccs = sims.max(axis=1)
    out = ccs - nnccs
    out[own_count < 1] = np.nan
    return np.asarray(out, np.float64)


def identity_folds(pairs: Sequence[Pair]) -> dict[str, int]:
    """The View 2 fold of each person in ``pairs`` (the ten folds are identity-disjoint)."""
    folds: dict[str, int] = {}
    for p in pairs:
        for path in (p.path1, p.path2):
            name = identity_of(path)
            if folds.setdefault(name, p.fold) != p.fold:
                raise ValueError(f"{name} appears in folds {folds[name]} and {p.fold}: folds are not disjoint")
    return folds


# -- error-versus-reject ---------------------------------------------------------------------------

REJECT_FRACTIONS: F64 = np.round(np.arange(0, 0.3001, 0.01), 4)
"""Fractions of the pairs rejected along an error-versus-reject curve (0 to 30 % in 1 % steps)."""

AREA_LIMIT = 0.2
"""The areas under the curves are taken up to this fraction of rejected pairs."""


def fmr_threshold(scores: F64, labels: npt.NDArray[np.bool_], fmr: float) -> float:
    """The lowest threshold (``score >= t`` accepts) at which at most ``floor(fmr * negatives)``
    negatives are accepted: just above the ``k+1``-th highest impostor score."""
    neg = np.sort(scores[~labels])[::-1]
    allowed = math.floor(fmr * neg.size + 1e-9)
    if allowed >= neg.size:
        return float(-np.inf)
    return float(np.nextafter(neg[allowed], np.inf))


def fnmr_at(scores: F64, labels: npt.NDArray[np.bool_], threshold: float) -> float:
    pos = scores[labels]
    return float(np.mean(pos < threshold)) if pos.size else float("nan")


def error_versus_reject(scores: npt.ArrayLike, labels: npt.ArrayLike, quality: npt.ArrayLike, *,
                        fmr: float = 1e-3, fractions: F64 = REJECT_FRACTIONS,
                        area_limit: float = AREA_LIMIT) -> dict[str, Any]:
    """FNMR as the lowest-quality pairs are rejected. ``quality`` is per pair (higher = better; ties
    are broken by pair order, which is fixed). ``fixed``: the threshold giving ``fmr`` on all pairs;
    ``rederived``: the threshold giving ``fmr`` on the pairs kept. ``area_fixed`` / ``area_rederived``:
    trapezoidal areas under the curves from 0 to ``area_limit`` rejected."""
    s, y, q = np.asarray(scores, np.float64), np.asarray(labels, bool), np.asarray(quality, np.float64)
    order = np.argsort(q, kind="stable")  # worst first
    n = s.size
    t0 = fmr_threshold(s, y, fmr)
    fixed, rederived = [], []
    for frac in fractions:
        keep = np.ones(n, bool)
        keep[order[: round(frac * n)]] = False
        fixed.append(fnmr_at(s[keep], y[keep], t0))
        rederived.append(fnmr_at(s[keep], y[keep], fmr_threshold(s[keep], y[keep], fmr)))
    part = fractions <= area_limit + 1e-12
    f = np.asarray(fixed)
    r = np.asarray(rederived)
    return {
        "fractions": fractions.tolist(),
        "fnmr_fixed": f.tolist(),
        "fnmr_rederived": r.tolist(),
        "area_fixed": float(np.trapezoid(f[part], fractions[part])),
        "area_rederived": float(np.trapezoid(r[part], fractions[part])),
        "threshold": t0,
    }


def image_rejection(pairs: Sequence[Pair], scores: F64, image_quality: Mapping[Path, float], fraction: float,
                    fmr: float = 1e-3) -> dict[str, float]:
    """FNMR at FMR = ``fmr`` (threshold fixed on all pairs) before and after rejecting the lowest-quality
    ``fraction`` of the images (every pair using one of them is dropped)."""
    y = np.array([p.same for p in pairs])
    t0 = fmr_threshold(scores, y, fmr)
    paths = sorted(image_quality, key=lambda p: (image_quality[p], str(p)))
    rejected = set(paths[: round(fraction * len(paths))])
    keep = np.array([p.path1 not in rejected and p.path2 not in rejected for p in pairs])
    before, after = fnmr_at(scores, y, t0), fnmr_at(scores[keep], y[keep], t0)
    return {"fraction_images": fraction, "images_rejected": len(rejected), "pairs_kept": int(keep.sum()),
            "fnmr_before": before, "fnmr_after": after,
            "relative_reduction": (before - after) / before if before > 0 else float("nan")}


def pair_scores(pairs: Sequence[Pair], embeddings: Mapping[Path, npt.ArrayLike]) -> F64:
    """Cosine of each pair's two embeddings (-1 for a pair missing one)."""
    out = np.full(len(pairs), -1.0)
    idx = [i for i, p in enumerate(pairs) if p.path1 in embeddings and p.path2 in embeddings]
    if idx:
        a = np.stack([np.asarray(embeddings[pairs[i].path1], np.float64) for i in idx])
        b = np.stack([np.asarray(embeddings[pairs[i].path2], np.float64) for i in idx])
        out[idx] = cosine_scores(a, b)
    return out


def random_erc(scores: F64, labels: npt.NDArray[np.bool_], seeds: int = 10, **kw: Any) -> dict[str, Any]:
    """The mean curve and areas of ``seeds`` random quality orders (the no-information baseline)."""
    runs = [error_versus_reject(scores, labels, np.random.default_rng(s).random(scores.size), **kw)
            for s in range(seeds)]
    out = dict(runs[0])
    for key in ("fnmr_fixed", "fnmr_rederived"):
        out[key] = np.mean([r[key] for r in runs], axis=0).tolist()
    for key in ("area_fixed", "area_rederived"):
        out[key] = float(np.mean([r[key] for r in runs]))
    out["seeds"] = seeds
    return out



def observation_features(path: Path, obs: Observation, runtime: Any = None) -> tuple[dict[str, Any], F64]:
    """The component measures of an observed LFW image and the utility model's features (``runtime``
    runs the QualityFace network; default: the default runtime)."""
    from faceflow.models.runtime import default_runtime
    from faceflow.quality.measures import measure_face
    from faceflow.quality.model import features
    from faceflow.quality.network import network_quality

    image = load_image(path)
    assert obs.face.expression is not None and obs.face.mesh is not None
    comps, regions = measure_face(image, obs.face, neutral=obs.face.expression.scores["neutral"],
                                  other_face_area=obs.other_area)
    network = float(network_quality(image, [obs.face], runtime or default_runtime())[0])
    return comps, features(comps, obs.face.mesh, regions, obs.face.score if obs.detected else 0.0, network)


def lfw_features(paths: Sequence[Path], observations: Mapping[Path, Observation], *,
                 progress: bool = True) -> tuple[list[Path], F64, F64]:
    """``(paths with an observation, component scores (n, components), model features (n, f))``."""
    from faceflow.models.runtime import default_runtime
    from faceflow.quality.measures import COMPONENTS

    runtime = default_runtime()
    kept, scores, feats = [], [], []
    for path in track([p for p in paths if p in observations], "quality measures", progress):
        comps, x = observation_features(path, observations[path], runtime)
        kept.append(path)
        scores.append([comps[n].score for n in COMPONENTS])
        feats.append(x)
    return kept, np.asarray(scores, np.float64), np.asarray(feats, np.float64)


# -- the whole evaluation ----------------------------------------------------------------------------

UNIFIED_INPUTS = ("qualityface", "embedding_norm")
"""Rows of the evaluation that are inputs of the unified score, shown alone: not baselines (the issue's
are the detector's score, the inter-eye distance, sharpness and random order), but the unified score
is reported against them too and counts as lowest only if it beats them."""


def eval_quality(root: Path | str, *, progress: bool = True, use_cache: bool = True, seeds: int = 10,
                 model: Any = None) -> dict[str, Any]:
    """Error-versus-reject curves on LFW View 2 for the unified score and the baselines.

    Each image is scored by the utility ensemble trained without its fold (``model``: a
    :class:`~faceflow.quality.model.UtilityModel`, default the packaged one); pair similarity is
    SFace's cosine (the default recognition model) on the face nearest the centre, as ``faceflow
    eval lfw`` does. Baselines: the detector's score (0 for an image where it found nothing), the
    inter-eye distance, the sharpness measure alone, random orders (mean of ``seeds``), and two of the
    unified score's own inputs alone: the QualityFace network and the SFace embedding's norm. Also the
    areas for every component score, FNMR before and after rejecting the worst 5 % of images, and
    the areas on the pairs of folds 0-4 (where the model's inputs were chosen) and of folds 5-9
    (which took no part in any choice) separately.
    """
    from faceflow.quality import packaged_utility_model
    from faceflow.quality.measures import COMPONENTS

    root = Path(root)
    pairs = read_pairs(root / "pairs.txt")
    paths, observations, errors = lfw_observations(root, progress=progress, use_cache=use_cache)
    kept, comp_scores, feats = lfw_features(paths, observations, progress=progress)
    ensembles = model if model is not None else packaged_utility_model()
    fold_of = identity_folds(pairs)
    folds = np.array([fold_of[identity_of(p)] for p in kept])
    norms = np.array([observations[p].embedding_norm for p in kept])
    unified = np.empty(len(kept))
    for k in np.unique(folds):
        unified[folds == k] = ensembles.score(feats[folds == k], norms[folds == k], int(k))
    from faceflow.quality.model import feature_names

    raw = {n: feats[:, i] for i, n in enumerate(feature_names())}
    per_image: dict[str, F64] = {
        "unified": unified,
        "detector_score": np.array([observations[p].face.score if observations[p].detected else 0.0 for p in kept]),
        "inter_eye_distance": raw["inter_eye_distance"],
        "sharpness": raw["sharpness"],
        "qualityface": raw["qualityface"],
        "embedding_norm": norms,
    }
    index = {p: i for i, p in enumerate(kept)}
    labels = np.array([p.same for p in pairs])
    usable = np.array([p.path1 in index and p.path2 in index for p in pairs])
    scores = pair_scores(pairs, {p: observations[p].embedding for p in kept})

    def pair_quality(q: F64) -> F64:
        out = np.full(len(pairs), -np.inf)  # a pair with an image that failed goes first
        i1 = np.array([index.get(p.path1, -1) for p in pairs])
        i2 = np.array([index.get(p.path2, -1) for p in pairs])
        out[usable] = np.minimum(q[i1[usable]], q[i2[usable]])
        return out

    curves = {name: error_versus_reject(scores, labels, pair_quality(q)) for name, q in per_image.items()}
    curves["random"] = random_erc(scores, labels, seeds=seeds)
    components = {n: error_versus_reject(scores, labels, pair_quality(comp_scores[:, i]))["area_fixed"]
                  for i, n in enumerate(COMPONENTS)}
    pair_folds = np.array([p.fold for p in pairs])
    halves: dict[str, dict[str, float]] = {}
    half_rejection: dict[str, dict[str, dict[str, float]]] = {}
    for half, sel in (("folds_0_4", pair_folds < 5), ("folds_5_9", pair_folds >= 5)):
        qs = {name: pair_quality(q)[sel] for name, q in per_image.items()}
        halves[half] = {name: error_versus_reject(scores[sel], labels[sel], q)["area_fixed"] for name, q in qs.items()}
        halves[half]["random"] = random_erc(scores[sel], labels[sel], seeds=seeds)["area_fixed"]
        half_pairs = [p for p, s in zip(pairs, sel, strict=True) if s]
        images = {x for p in half_pairs for x in (p.path1, p.path2)}
        half_rejection[half] = {
            name: image_rejection(half_pairs, scores[sel], {p: float(q[i]) for i, p in enumerate(kept) if p in images},
                                  0.05)
            for name, q in per_image.items()}
    baselines = [n for n in curves if n not in ("unified", *UNIFIED_INPUTS)]
    best = min(baselines, key=lambda n: curves[n]["area_fixed"])
    rejection = {name: image_rejection(pairs, scores, {p: float(q[i]) for i, p in enumerate(kept)}, 0.05)
                 for name, q in per_image.items()}
    area_u, area_b = curves["unified"]["area_fixed"], curves[best]["area_fixed"]
    return {
        "protocol": "quality",
        "recognition_model": "sface",
        "detector": "yunet",
        "images": len(paths),
        "images_scored": len(kept),
        "detection_failures": int(sum(not o.detected for o in observations.values())),
        "pairs": len(pairs),
        "fmr": 1e-3,
        "area_limit": AREA_LIMIT,
        "curves": curves,
        "component_areas_fixed": components,
        "areas_fixed_by_half": halves,
        "reject_5pct_images_by_half": half_rejection,
        "best_baseline": best,
        "unified_area_reduction_vs_best_baseline": (area_b - area_u) / area_b if area_b > 0 else None,
        "unified_area_reduction_vs_its_inputs_alone": {
            n: (curves[n]["area_fixed"] - area_u) / curves[n]["area_fixed"] for n in UNIFIED_INPUTS},
        "unified_lowest": all(area_u < c["area_fixed"] for n, c in curves.items() if n != "unified"),
        "reject_5pct_images": rejection,
        "errors": errors,
    }


def plot_erc(result: Mapping[str, Any], path: Path | str) -> None:
    """The fixed-threshold and re-derived-threshold curves side by side, one line per measure."""
    from faceflow.eval.report import new_figure, save_figure

    fig = new_figure("plots", figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=False)
    for ax, key, title in ((axes[0], "fnmr_fixed", "threshold fixed on all pairs"),
                           (axes[1], "fnmr_rederived", "threshold re-derived on the pairs kept")):
        for name, c in result["curves"].items():
            area = c["area_fixed" if key == "fnmr_fixed" else "area_rederived"]
            ax.plot(100 * np.asarray(c["fractions"]), 100 * np.asarray(c[key]),
                    label=f"{name} (area {1000 * area:.2f}e-3)", lw=2.2 if name == "unified" else 1.2,
                    ls="--" if name == "random" else "-")
        ax.axvline(100 * result["area_limit"], color="grey", lw=0.6)
        ax.set_xlabel("pairs rejected (%)")
        ax.set_ylabel(f"FNMR at FMR = {result['fmr']:g} (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Error versus reject, LFW View 2, SFace (pair quality = min of the two)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
