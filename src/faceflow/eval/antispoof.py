"""Presentation-attack detection on folders laid out like ``antispoof/<source>/`` with ``labels.csv``
(columns ``path``, ``label`` = live | spoof, ``subject``, ``attack_type``).

Figures, in ISO/IEC 30107-3 terms, at a threshold fixed on the training side only:

* APCER: attacks accepted as live, per attack type; the reported APCER is the worst type's;
* BPCER: bona fide (live) faces rejected; ACER = (APCER + BPCER) / 2;
* HTER = (APCER over all attacks pooled + BPCER) / 2, the usual cross-dataset figure;
* AUC and BPCER at APCER = 5 % (threshold-free, read on the test side's curve), and the test EER.

Each figure has a 95 % bootstrap interval from resampling the test side's *subjects* (images of one
person are not independent) and the number of images and subjects behind it.

Protocols:

* ``intra(source)``: ``splits`` random subject-disjoint halves of one source; train on one half, test
  on the other; figures are the mean over splits (each bootstrap draw resamples every split's test
  subjects and averages the splits);
* ``cross(A, B)``: train on all of A, test on all of B.

"Train" means, per candidate: a candidate trained here (:data:`TRAINED`: the texture model, the
image-distortion model, the head on Human's hidden layers) chooses its blocks and L2 strength on the
training side (:func:`select_recipe`), is fitted there and takes its threshold from subject-disjoint
out-of-fold scores there (``spectral``, the texture recipe without its LBP histograms, is fitted with a
fixed strength); a packaged network is calibrated there (a one-input logistic regression on its score's logit,
which also turns round a score that runs the wrong way there) and gets its threshold there; the fused
model's combiner is fitted there on the out-of-fold texture scores and the networks' scores. Nothing is
fitted or chosen on the test side.

Per image (cached, see :func:`image_results`): the largest face of the default detector (a centre box
when none is found), the texture and distortion features, Human's hidden layers, and each network's
score, with the seconds each took on one thread.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import DatasetError, FaceflowError
from faceflow.eval._common import track
from faceflow.eval.cache import ResultCache, runtime_versions
from faceflow.liveness.candidates import NETWORKS, SINGLE
from faceflow.liveness.distortion import IDA_DIMS, face_distortion
from faceflow.liveness.head import HEAD_BLOCKS, HumanHead
from faceflow.liveness.models import LivenessModel, logit
from faceflow.liveness.texture import (
    BLOCKS,
    L2_MENU,
    LinearModel,
    Recipe,
    equal_error_threshold,
    fit_logistic,
    fit_recipe,
    layout,
)
from faceflow.models.registry import MODELS
from faceflow.outputs import item_error
from faceflow.types import largest_face

F64 = npt.NDArray[np.float64]


FUSIONS: dict[str, tuple[str, ...]] = {
    "fused": ("texture", "human_antispoof", "human_liveness"),
    "fused_cheap": ("spectral", "human_antispoof", "human_liveness"),
    "fused_nets": ("human_antispoof", "human_liveness", "deeptree_int8"),
    "fused_head": ("texture", "human_head"),
}
"""Fused candidates and their inputs: ``fused`` is the texture model and the two cheap networks;
``fused_cheap`` the same without the LBP histograms (``spectral``), and ``fused_head`` the texture model
with the head trained on Human's hidden layers, all within the default's budget of 30 ms per face;
``fused_nets`` the packaged networks only (nothing trained here but the combiner), with the int8 deep
tree, over that budget. A fusion is scored only when all its networks are."""

EVAL_BLOCKS: dict[str, slice] = layout({"lbp": BLOCKS["lbp"].stop - BLOCKS["lbp"].start,
                                        "spectral": BLOCKS["spectral"].stop - BLOCKS["spectral"].start,
                                        "ida": IDA_DIMS,
                                        **{n: b.stop - b.start for n, b in HEAD_BLOCKS.items()}})
"""The per-image vector the evaluation fits on: the texture features, the image-distortion features
(:mod:`faceflow.liveness.distortion`) and Human's hidden layers (:class:`HumanHead`), side by side."""

TRAINED: dict[str, tuple[tuple[str, ...], ...]] = {
    "texture": (("lbp", "spectral"),),
    "distortion": (("ida",),),
    "human_head": (("hemb",), ("hemb", "lemb")),
}
"""The candidates trained here and the block sets each may choose from (each with every strength of
:data:`faceflow.liveness.texture.L2_MENU`, chosen on the training side by :func:`select_recipe`):
``texture`` the colour texture; ``distortion`` Wen, Han & Jain's image-distortion features alone;
``human_head`` Human's antispoof hidden layer, with or without the liveness network's."""


def menu(name: str) -> tuple[Recipe, ...]:
    """The recipes candidate ``name`` (one of :data:`TRAINED`) chooses from, in tie-breaking order."""
    return tuple(Recipe.of(blocks, l2, EVAL_BLOCKS) for blocks in TRAINED[name] for l2 in L2_MENU)


BOOTSTRAP = 1000
BOX_RULE = "largest-yunet-else-centre-0.5"
APCER_FOR_BPCER = 0.05


@dataclass(frozen=True)
class Sample:
    path: Path
    source: str
    live: bool
    subject: str
    attack: str
    session: str = ""
    """Capture session where the source has one (NUAA's ``session``), for :func:`shift_folds`."""


def load_source(folder: Path) -> list[Sample]:
    """The images of one source folder (``labels.csv`` beside ``live/`` and ``spoof/``)."""
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise DatasetError(f"{folder}: no labels.csv (expected antispoof/<source>/labels.csv)")
    out = []
    with open(labels, newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            where = f"{labels}:{reader.line_num}"
            try:
                if None in row or None in row.values():  # csv marks more fields than the header, or fewer
                    given = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                    raise DatasetError(f"{where}: {given} fields, the header has {len(reader.fieldnames or [])}")
                label = row["label"].strip()
                if label not in ("live", "spoof"):
                    raise DatasetError(f"{where}: label {label!r} is neither live nor spoof")
                out.append(Sample(folder / row["path"], folder.name, label == "live", row["subject"].strip(),
                                  (row.get("attack_type") or "").strip() or ("none" if label == "live" else "attack"),
                                  (row.get("session") or "").strip()))
            except KeyError as exc:
                raise DatasetError(f"{labels}: missing column {exc}") from None
    if not any(s.live for s in out) or all(s.live for s in out):
        raise DatasetError(f"{labels}: needs both live and spoof images")
    return out


def find_sources(root: Path) -> dict[str, Path]:
    """``root`` itself when it holds ``labels.csv``, else its sub-folders that do, by name."""
    if (root / "labels.csv").is_file():
        return {root.name: root}
    found = {p.name: p for p in sorted(root.iterdir()) if (p / "labels.csv").is_file()} if root.is_dir() else {}
    if not found:
        raise DatasetError(f"{root}: no labels.csv in it or in any sub-folder")
    return found


# -- per-image results ----------------------------------------------------------------------------------
def _module_digest(*modules: str) -> str:
    """sha256 (12 hex) of the named faceflow modules' source: the part of the code an entry depends on."""
    import importlib

    h = hashlib.sha256()
    for name in modules:
        mod = importlib.import_module(name)
        h.update(Path(str(mod.__file__)).read_bytes())
    return h.hexdigest()[:12]


def _cache(what: str, models: Sequence[str], modules: Sequence[str]) -> ResultCache:
    """A cache keyed by ``what``, the weights' sha256, the source of the modules that compute it and the
    runtime libraries' versions (not the whole package: one edit elsewhere must not re-run a 1 s network
    on every image)."""
    weights = ",".join(f"{f.name}={f.sha256[:12]}" for m in models if m in MODELS for f in MODELS[m].files)
    libs = ",".join(f"{k}={v}" for k, v in sorted(runtime_versions().items()))
    return ResultCache(f"antispoof|{what}|{weights}|{_module_digest(*modules)}|{libs}")


def image_results(samples: Sequence[Sample], networks: Sequence[str], *, use_cache: bool = True,
                  progress: bool = True, keep_going: bool = False) -> dict[str, Any]:
    """Per image: ``box``, ``features`` (:data:`EVAL_BLOCKS`: texture, distortion and Human's hidden
    layers, zeros unless both of Human's networks are among ``networks``; ``head`` says which), each
    network's ``scores[name]``, the source, attack type and session, and the median ms
    each part took (``texture``, ``distortion`` and ``human_head`` are feature times), from the cache
    when present. An image that cannot be read or scored is a :class:`DatasetError` naming it; with
    ``keep_going`` it is left out instead: ``samples`` lists those kept (the arrays' rows), ``errors``
    the others (``path`` and ``error``)."""
    from faceflow.detect import create_detector
    from faceflow.io import load_image
    from faceflow.models.runtime import Runtime

    rt = Runtime(threads=1)
    detector = create_detector("yunet", runtime=rt)
    texture = SINGLE["texture"](rt)
    # human_head reads Human's two networks: scored only when both are (``--networks ""`` needs neither)
    head = HumanHead(rt) if all(HumanHead.registry_models[i] in networks for i in (0, 1)) else None
    nets: dict[str, LivenessModel] = {n: SINGLE[n](rt) for n in networks}
    # The box is the largest detection, else a centre square of half the shorter side (BOX_RULE);
    # the candidates' entries depend on the box's key, not on this module's source.
    box_key = f"{BOX_RULE}|{_module_digest('faceflow.detect.yunet', 'faceflow.detect.base')}"
    caches = {"box": _cache(f"box|{box_key}", ("yunet",), ()),
              "texture": _cache(f"texture|{box_key}", (), ("faceflow.align", "faceflow.liveness.texture")),
              "distortion": _cache(f"distortion|{box_key}", (), ("faceflow.align", "faceflow.liveness.texture",
                                                                  "faceflow.liveness.distortion")),
              "human_head": _cache(f"human_head|{box_key}", ("human_antispoof", "human_liveness"),
                                   ("faceflow.align", "faceflow.liveness.models", "faceflow.liveness.head"))}
    for n in networks:
        caches[n] = _cache(f"{n}|{box_key}", nets[n].registry_models, ("faceflow.align", "faceflow.liveness.models"))
    boxes, feats, kept, errors = [], [], [], []
    scores: dict[str, list[float]] = {n: [] for n in networks}
    seconds: dict[str, list[float]] = {n: [] for n in ("detect", "texture", "distortion", "human_head", *networks)}
    for s in track(samples, "antispoof", progress):
        image = _LazyImage(s.path, load_image)
        try:
            box = np.asarray(_cached(caches["box"], s.path, use_cache, seconds["detect"], _largest_box,
                                     detector, image), np.float64)
            parts = [_cached(caches["texture"], s.path, use_cache, seconds["texture"], _features, texture, image,
                             box),
                     _cached(caches["distortion"], s.path, use_cache, seconds["distortion"], _distortion, image, box),
                     np.zeros(HEAD_BLOCKS["lemb"].stop) if head is None else
                     _cached(caches["human_head"], s.path, use_cache, seconds["human_head"], _features, head, image,
                             box)]
            values = [_cached(caches[n], s.path, use_cache, seconds[n], _score, nets[n], image, box) for n in networks]
        except FaceflowError as exc:  # left out of the figures and listed (its message names the path)
            errors.append({"path": str(s.path), "error": str(exc)})
            continue
        kept.append(s)
        boxes.append(box)
        feats.append(np.concatenate([np.asarray(p, np.float64).ravel() for p in parts]))
        for n, value in zip(networks, values, strict=True):
            scores[n].append(float(np.asarray(value).reshape(-1)[0]))
    if errors and not keep_going:  # callers that pair the rows with their own samples need every image
        raise DatasetError("; ".join(item_error(e["path"], e["error"]) for e in errors[:5]))
    return {"box": np.asarray(boxes), "features": np.asarray(feats),
            "scores": {n: np.asarray(v) for n, v in scores.items()},
            "source": np.array([s.source for s in kept]), "attack": np.array([s.attack for s in kept]),
            "session": np.array([s.session for s in kept]), "head": head is not None,
            "ms": {n: float(1000 * np.median(v)) for n, v in seconds.items() if v},
            "samples": kept, "errors": errors}


class _LazyImage:
    """An image decoded on first use only (a fully cached sample is never read)."""

    def __init__(self, path: Path, load: Callable[[Path], Any]) -> None:
        self.path, self._load, self._image = path, load, None

    def get(self) -> Any:
        if self._image is None:
            self._image = self._load(self.path)
        return self._image


def _cached(cache: ResultCache, path: Path, use_cache: bool, times: list[float], fn: Callable[..., Any],
            *args: Any) -> Any:
    """``fn(*args)`` through ``cache`` (keyed by the image file), its seconds appended to ``times``."""
    import time

    hit, value, secs = cache.get(path) if use_cache else (False, None, 0.0)
    if not hit:
        t0 = time.perf_counter()
        value = fn(*args)
        secs = time.perf_counter() - t0
        if use_cache:
            cache.put(path, value, secs)
    times.append(secs)
    return value


def _largest_box(detector: Any, image: _LazyImage) -> F64:
    """:data:`BOX_RULE`: the largest detection, else a centre square of half the shorter side."""
    img = image.get()
    face = largest_face(detector.detect(img))
    if face is not None:
        return np.asarray(face.box, np.float64)
    h, w = img.shape[:2]
    side = 0.5 * min(h, w)
    return np.array([w / 2 - side / 2, h / 2 - side / 2, w / 2 + side / 2, h / 2 + side / 2])


def _features(model: Any, image: _LazyImage, box: F64) -> F64:
    return np.asarray(model.features(image.get(), [box])[0], np.float64)


def _distortion(image: _LazyImage, box: F64) -> F64:
    return face_distortion(image.get(), box)


def _score(model: LivenessModel, image: _LazyImage, box: F64) -> F64:
    return model.scores(image.get(), [box])


# -- fitting on a training side ------------------------------------------------------------------------
def subject_folds(subjects: Sequence[str], k: int, seed: int) -> list[npt.NDArray[np.bool_]]:
    """``k`` test masks over the samples, each a disjoint set of whole subjects."""
    uniq = np.array(sorted(set(subjects)))
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    groups = np.array_split(uniq, min(k, len(uniq)))
    subj = np.asarray(subjects)
    return [np.isin(subj, g) for g in groups]


def out_of_fold(x: F64, live: npt.NDArray[np.bool_], subjects: Sequence[str], *, l2: float = 1.0,
                recipe: Recipe | None = None, k: int = 5, seed: int = 0) -> F64:
    """Texture scores of the training side, each from a model fitted without that sample's subject
    (on all of ``x``'s columns with ``l2``, or on ``recipe``'s)."""
    out = np.zeros(len(x))
    for test in subject_folds(subjects, k, seed):
        train = ~test
        if len(set(live[train])) < 2:
            out[test] = 0.5
            continue
        model = fit_recipe(x[train], live[train], recipe) if recipe else fit_logistic(x[train], live[train], l2=l2)
        out[test] = model.score(x[test])
    return out


def shift_folds(live: npt.NDArray[np.bool_], subjects: Sequence[str], sources: Sequence[str],
                sessions: Sequence[str], attacks: Sequence[str]) -> list[tuple[npt.NDArray[np.bool_],
                                                                             npt.NDArray[np.bool_]]]:
    """(training, validation) masks that put a shift of capture conditions or attack between the two
    parts, a stand-in for another dataset read from one training side only:

    * several sources: leave one source out;
    * else several sessions (NUAA): leave one session out, subject-disjoint (validation = that
      session's images of half the subjects, training = the other sessions' images of the other half);
    * else several attack types (MSU-MFSD): leave one out by subject (validation = the subjects whose
      attack is that instrument, live and attack images; training = the others, who never show it).

    Folds whose training or validation part lacks a class are dropped."""
    y = np.asarray(live, bool)
    subj, src, ses = np.asarray(subjects), np.asarray(sources), np.asarray(sessions)
    att = np.asarray(attacks)
    folds: list[tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]] = []
    if len(set(src)) > 1:
        folds = [(src != s, src == s) for s in sorted(set(src))]
    elif len(set(ses)) > 1:
        people = np.array(sorted(set(subj)))
        np.random.default_rng(0).shuffle(people)
        for se in sorted(set(ses)):
            for half in (people[::2], people[1::2]):
                inside = np.isin(subj, half)
                folds.append(((ses != se) & ~inside, (ses == se) & inside))
    else:
        attack_of = {p: a for p, a, v in zip(subj, att, y, strict=True) if not v}
        kind = np.array([attack_of.get(p, "") for p in subj])
        if len(set(attack_of.values())) > 1:
            folds = [(kind != t, kind == t) for t in sorted(set(attack_of.values()))]
    return [(t, v) for t, v in folds if len(set(y[t])) == 2 and len(set(y[v])) == 2]


@dataclass(frozen=True)
class Selection:
    """The texture recipe a training side chose, its out-of-fold scores there and the criterion of
    every recipe on the menu."""

    recipe: Recipe
    oof: F64
    criteria: dict[str, float]


def select_recipe(x: F64, live: npt.NDArray[np.bool_], subjects: Sequence[str], attacks: Sequence[str],
                  folds: Sequence[tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]],
                  recipes: Sequence[Recipe]) -> Selection:
    """Choose a trained candidate's recipe (blocks and L2) on one training side only, by a rule fixed
    before it was run:

    criterion = mean of (a) the subject-disjoint 5-fold out-of-fold ACER (worst attack type) at the
    equal-error threshold of those out-of-fold scores, the in-source error, and (b) the HTER of the
    pooled validation decisions over ``folds`` (:func:`shift_folds`), each fold's model fitted on its
    training part and thresholded at the equal-error point of that part's own out-of-fold scores, the
    error under a shift. Without folds the criterion is (a). Lowest criterion wins; ties go to the
    earlier recipe. Nothing outside ``x`` (the training side) is read."""
    y = np.asarray(live, bool)
    att = np.asarray(attacks)
    subj = list(subjects)
    best: tuple[float, int] | None = None
    oofs: list[F64] = []
    criteria: dict[str, float] = {}
    for i, recipe in enumerate(recipes):
        oof = out_of_fold(x, y, subj, recipe=recipe)
        oofs.append(oof)
        crit = metrics(oof, y, att, equal_error_threshold(oof, y))["acer"]
        if folds:
            accepted = np.zeros(len(y), bool)
            seen = np.zeros(len(y), bool)
            for tr, va in folds:
                sub = [p for p, t in zip(subj, tr, strict=True) if t]
                thr = equal_error_threshold(out_of_fold(x[tr], y[tr], sub, recipe=recipe), y[tr])
                accepted[va] = fit_recipe(x[tr], y[tr], recipe).score(x[va]) >= thr
                seen |= va
            v = y[seen]
            crit = (crit + (accepted[seen][~v].mean() + (~accepted[seen][v]).mean()) / 2) / 2
        criteria[str(recipe)] = float(crit)
        if best is None or crit < best[0] - 1e-12:
            best = (float(crit), i)
    assert best is not None
    return Selection(recipes[best[1]], oofs[best[1]], criteria)


def fit_trained(x: F64, live: npt.NDArray[np.bool_], subjects: Sequence[str], attacks: Sequence[str],
                folds: Sequence[tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]], recipes: Sequence[Recipe]
                ) -> tuple[LinearModel, Selection]:
    """A trained candidate on one training side: the :func:`select_recipe` choice fitted on all of it,
    thresholded at the equal-error point of its out-of-fold scores there."""
    sel = select_recipe(x, live, subjects, attacks, folds, recipes)
    m = fit_recipe(x, live, sel.recipe)
    return LinearModel(m.mean, m.scale, m.weights, m.bias, equal_error_threshold(sel.oof, live)), sel


@dataclass(frozen=True)
class Fitted:
    """One candidate as fitted on a training side: score function of test indices, and its threshold."""

    scores: F64
    threshold: float
    choice: str = ""
    """What the training side chose, where the candidate chooses (the texture model's recipe)."""


TEXTURE_L2 = 1.0
"""The L2 strength of ``spectral`` (on standardised features), the texture model of the previous
sessions without its LBP histograms (the texture model itself picks its own, :func:`select_recipe`)."""


def fit_candidates(data: dict[str, Any], train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_],
                   live: npt.NDArray[np.bool_], subjects: Sequence[str], networks: Sequence[str]
                   ) -> dict[str, Fitted]:
    """Every candidate fitted on ``train`` and scored on ``test``."""
    x = data["features"]
    subj_train = [s for s, t in zip(subjects, train, strict=True) if t]
    out: dict[str, Fitted] = {}
    att = data["attack"][train]
    # the candidates trained here: each recipe chosen on the training side (select_recipe), then fitted there
    folds = shift_folds(live[train], subj_train, data["source"][train], data["session"][train], att)
    oofs: dict[str, F64] = {}
    for name in TRAINED:
        if name == "human_head" and not data.get("head", True):
            continue
        model, sel = fit_trained(x[train], live[train], subj_train, att, folds, menu(name))
        oofs[name] = sel.oof
        out[name] = Fitted(model.score(x[test]), model.threshold, str(sel.recipe))
    # spectrum, colour moments and sharpness only, the texture recipe of the earlier sessions (reported
    # beside the texture model, to show how much of its failure across datasets the histograms cause)
    xs = x[:, EVAL_BLOCKS["spectral"]]
    oof_s = out_of_fold(xs[train], live[train], subj_train, l2=TEXTURE_L2)
    spectral = fit_logistic(xs[train], live[train], l2=TEXTURE_L2)
    out["spectral"] = Fitted(spectral.score(xs[test]), equal_error_threshold(oof_s, live[train]))
    for n in networks:
        # calibrated on the training side: a one-input logistic regression on the score's logit, so a
        # network whose score runs the other way there (AUC < 0.5) is turned round there, not on the test side
        s = logit(data["scores"][n])[:, None]
        cal = fit_logistic(s[train], live[train], l2=1.0)
        out[n] = Fitted(cal.score(s[test]), cal.threshold)
    # the fused candidates: a logistic regression over the parts' logits, fitted on the training side's
    # out-of-fold scores for the parts trained there and on the networks' own scores
    # (a network enters with its own score on both sides, never with its calibrated test score: the
    # combiner was fitted on the former)
    train_scores = {**oofs, "spectral": oof_s, **{n: data["scores"][n][train] for n in networks}}
    test_scores = {**{n: out[n].scores for n in (*oofs, "spectral")},
                   **{n: data["scores"][n][test] for n in networks}}
    for name, parts in FUSIONS.items():
        if not all(p in train_scores for p in parts):
            continue
        tr = np.stack([train_scores[p] for p in parts], axis=1)
        te = np.stack([test_scores[p] for p in parts], axis=1)
        combiner = fit_logistic(logit(tr), live[train], l2=1.0)
        out[name] = Fitted(combiner.score(logit(te)), combiner.threshold)
    return out


# -- metrics ------------------------------------------------------------------------------------------------
def auc(scores: F64, live: npt.NDArray[np.bool_]) -> float:
    """Probability that a live face scores above an attack (ties count half)."""
    pos, neg = scores[live], scores[~live]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks of ties
    _, first, counts = np.unique(allv, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def bpcer_at_apcer(scores: F64, live: npt.NDArray[np.bool_], apcer: float = APCER_FOR_BPCER) -> float:
    """BPCER at the lowest threshold whose APCER (all attacks pooled) is at most ``apcer``."""
    neg = np.sort(scores[~live])
    if not len(neg) or not live.any():
        return float("nan")
    allowed = int(np.floor(apcer * len(neg)))  # attacks that may score at or above the threshold
    thr = neg[len(neg) - allowed - 1] if allowed < len(neg) else -np.inf
    return float((scores[live] <= thr).mean())


def eer(scores: F64, live: npt.NDArray[np.bool_]) -> float:
    t = equal_error_threshold(scores, live)
    return float(((scores[~live] >= t).mean() + (scores[live] < t).mean()) / 2)


def metrics(scores: F64, live: npt.NDArray[np.bool_], attacks: Sequence[str] | npt.NDArray[Any],
            threshold: float) -> dict[str, float]:
    """APCER (worst attack type), BPCER, ACER, HTER at ``threshold``, plus AUC, BPCER@APCER=5 %, EER."""
    accepted = scores >= threshold
    att = np.asarray(attacks)
    per_type = {a: float(accepted[(~live) & (att == a)].mean()) for a in sorted(set(att[~live]))}
    apcer_max = max(per_type.values())
    apcer_all = float(accepted[~live].mean())
    bpcer = float((~accepted[live]).mean())
    return {"apcer": apcer_max, "bpcer": bpcer, "acer": (apcer_max + bpcer) / 2,
            "apcer_pooled": apcer_all, "hter": (apcer_all + bpcer) / 2, "auc": auc(scores, live),
            "bpcer_at_apcer5": bpcer_at_apcer(scores, live), "eer": eer(scores, live),
            **{f"apcer_{a}": v for a, v in per_type.items()}}


@dataclass(frozen=True)
class Split:
    """One training/testing partition and the fitted candidates' test scores."""

    test: npt.NDArray[np.bool_]
    fitted: dict[str, Fitted]


def summarise(splits: Sequence[Split], live: npt.NDArray[np.bool_], attacks: Sequence[str],
              subjects: Sequence[str], *, seed: int = 0, draws: int = BOOTSTRAP) -> dict[str, Any]:
    """Per candidate: each metric's mean over the splits, with a subject bootstrap 95 % interval."""
    att = np.asarray(attacks)
    subj = np.asarray(subjects)
    rng = np.random.default_rng(seed)
    names = list(splits[0].fitted)
    # one resampling plan shared by all candidates, so their intervals are comparable
    plans = []
    for sp in splits:
        idx = np.flatnonzero(sp.test)
        people = sorted(set(subj[idx]))
        by_person = {p: idx[subj[idx] == p] for p in people}
        picks = [np.concatenate([by_person[p] for p in rng.choice(people, len(people))]) for _ in range(draws)]
        plans.append((idx, picks))
    out: dict[str, Any] = {}
    for name in names:
        point: list[dict[str, float]] = []
        boot: list[list[dict[str, float]]] = []
        for sp, (idx, picks) in zip(splits, plans, strict=True):
            f = sp.fitted[name]
            full = np.full(len(live), np.nan)
            full[idx] = f.scores
            point.append(metrics(full[idx], live[idx], att[idx], f.threshold))
            draws_m = []
            for pick in picks:
                if live[pick].all() or not live[pick].any():
                    continue
                draws_m.append(metrics(full[pick], live[pick], att[pick], f.threshold))
            boot.append(draws_m)
        res: dict[str, Any] = {}
        for key in ("apcer", "bpcer", "acer", "hter", "auc", "bpcer_at_apcer5", "eer", "apcer_pooled"):
            value = float(np.nanmean([p[key] for p in point]))
            n = min(len(b) for b in boot)
            per_draw = np.nanmean([[b[i][key] for i in range(n)] for b in boot], axis=0)
            lo, hi = np.nanpercentile(per_draw, [2.5, 97.5])
            res[key] = {"value": value, "ci95": [float(lo), float(hi)]}
        types = sorted({k for p in point for k in p if k.startswith("apcer_") and k not in ("apcer_pooled",)})
        res["apcer_by_type"] = {t[6:]: float(np.nanmean([p.get(t, np.nan) for p in point])) for t in types}
        res["threshold"] = float(np.mean([sp.fitted[name].threshold for sp in splits]))
        if any(sp.fitted[name].choice for sp in splits):
            res["choices"] = [sp.fitted[name].choice for sp in splits]
        out[name] = res
    return out


# -- protocols ----------------------------------------------------------------------------------------------
def _arrays(samples: Sequence[Sample]) -> tuple[npt.NDArray[np.bool_], list[str], list[str]]:
    return (np.array([s.live for s in samples]), [f"{s.source}/{s.subject}" for s in samples],
            [s.attack for s in samples])


def run_intra(samples: Sequence[Sample], data: dict[str, Any], networks: Sequence[str], *, splits: int = 10,
              seed: int = 0) -> dict[str, Any]:
    """Subject-disjoint halves of one source, ``splits`` times."""
    live, subjects, attacks = _arrays(samples)
    uniq = sorted(set(subjects))
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(splits):
        order = rng.permutation(uniq)
        test_people = set(order[: len(order) // 2])
        test = np.array([s in test_people for s in subjects])
        parts.append(Split(test, fit_candidates(data, ~test, test, live, subjects, networks)))
    result = summarise(parts, live, attacks, subjects, seed=seed)
    return {"protocol": "intra", "source": samples[0].source, "splits": splits,
            "images": len(samples), "test_images_per_split": int(np.mean([p.test.sum() for p in parts])),
            "subjects": len(uniq), "candidates": result, "_splits": parts, "_live": live}


def run_cross(train: Sequence[Sample], test: Sequence[Sample], data_train: dict[str, Any],
              data_test: dict[str, Any], networks: Sequence[str], *, seed: int = 0) -> dict[str, Any]:
    """Fit on all of ``train``, test on all of ``test``."""
    both = [*train, *test]
    live, subjects, attacks = _arrays(both)
    data = {"features": np.concatenate([data_train["features"], data_test["features"]]),
            "scores": {n: np.concatenate([data_train["scores"][n], data_test["scores"][n]]) for n in networks},
            **{k: np.concatenate([data_train[k], data_test[k]]) for k in ("source", "session", "attack")},
            "head": data_train["head"] and data_test["head"]}
    is_test = np.array([False] * len(train) + [True] * len(test))
    split = Split(is_test, fit_candidates(data, ~is_test, is_test, live, subjects, networks))
    result = summarise([split], live, attacks, subjects, seed=seed)
    return {"protocol": "cross", "train": train[0].source, "test": test[0].source,
            "train_images": len(train), "images": len(test),
            "subjects": len({s.subject for s in test}), "candidates": result, "_splits": [split], "_live": live}


def speed(datas: Sequence[dict[str, Any]], networks: Sequence[str]) -> dict[str, float]:
    """Median ms per face (one thread) of each candidate, over the images scored; ``fused`` is the sum of
    its parts. Detection is listed apart (every candidate needs it)."""
    ms: dict[str, float] = {}
    for name in ("detect", "texture", "distortion", "human_head", *networks):
        values = [d["ms"][name] for d in datas if name in d["ms"]]
        if values:
            ms[name] = float(np.mean(values))
    if "texture" in ms:
        ms["spectral"] = ms["texture"]  # computed from the same features (an upper bound)
    for name, parts in FUSIONS.items():
        if all(p in ms for p in parts):
            ms[name] = sum(ms[p] for p in parts)
    return ms


def eval_antispoof(root: Path | str, *, intra: Sequence[str] = (), cross: Sequence[tuple[str, str]] = (),
                   networks: Sequence[str] = NETWORKS, splits: int = 10, use_cache: bool = True,
                   progress: bool = True) -> dict[str, Any]:
    """Run the protocols asked for (``intra`` sources, ``cross`` (A, B) pairs) on the sources under
    ``root``; every candidate side by side with its ms per face. Images that could not be read or scored
    are left out of the figures and of ``images`` and listed in ``errors``."""
    sources = find_sources(Path(root))
    wanted = set(intra) | {a for pair in cross for a in pair}
    for name in wanted:
        if name not in sources:
            raise DatasetError(f"no source {name!r} under {root}; found: {', '.join(sources)}")
    data = {n: image_results(load_source(sources[n]), networks, use_cache=use_cache, progress=progress,
                             keep_going=True) for n in sorted(wanted)}
    samples: dict[str, list[Sample]] = {n: d["samples"] for n, d in data.items()}
    errors = [e for d in data.values() for e in d["errors"]]
    for n, kept in samples.items():
        if len({s.live for s in kept}) < 2:
            raise DatasetError(f"{sources[n]}: needs both live and spoof images that can be read "
                               f"({len(data[n]['errors'])} could not)")
    runs = []
    for n in intra:
        runs.append(run_intra(samples[n], data[n], networks, splits=splits))
    for a, b in cross:
        runs.append(run_cross(samples[a], samples[b], data[a], data[b], networks))
    return {"runs": runs, "ms_per_face": speed(list(data.values()), networks),
            "images": {n: len(v) for n, v in samples.items()}, "bootstrap_draws": BOOTSTRAP, "errors": errors}


def public(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without the private arrays (for JSON)."""
    return {**result, "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in result["runs"]]}


def plot_det(result: dict[str, Any], path: Path | str) -> Path:
    """DET curves (APCER against BPCER on normal-deviate axes) of every candidate, one panel per run;
    intra runs pool the test scores of all splits."""
    from scipy.stats import norm

    from faceflow.eval.report import new_figure, save_figure

    runs = result["runs"]
    fig = new_figure("plots", figsize=(5 * len(runs), 4.6))
    axes = fig.subplots(1, len(runs), squeeze=False)
    ticks = [0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
    for ax, run in zip(axes[0], runs, strict=True):
        live = run["_live"]
        for name in run["candidates"]:
            s_all, y_all = [], []
            for sp in run["_splits"]:
                s_all.append(sp.fitted[name].scores)
                y_all.append(live[sp.test])
            s, y = np.concatenate(s_all), np.concatenate(y_all)
            thr = np.unique(s)
            ap = np.array([(s[~y] >= t).mean() for t in thr])
            bp = np.array([(s[y] < t).mean() for t in thr])
            eps = 1e-3
            ax.plot(norm.ppf(np.clip(ap, eps, 1 - eps)), norm.ppf(np.clip(bp, eps, 1 - eps)), label=name)
        ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
        ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
        ax.set_xlim(norm.ppf(0.005), norm.ppf(0.6))
        ax.set_ylim(norm.ppf(0.005), norm.ppf(0.6))
        ax.set_xlabel("APCER (%)")
        ax.set_ylabel("BPCER (%)")
        title = f"intra {run['source']}" if run["protocol"] == "intra" else f"{run['train']} -> {run['test']}"
        ax.set_title(f"{title} ({run['images']} images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
