"""How well anonymisation covers faces: WIDER FACE coverage per difficulty, and LFW re-identification.

Coverage (``faceflow eval anonymize --root WIDER_DIR``): the covered pixels of each image are what
the annotator would change (:func:`faceflow.anonymize.coverage_mask`: each covered box grown by the
margin, in its shape). Per difficulty (the faces of that setting's ``gt_list``):

* ``covered``: the share of ground-truth faces with at least :data:`COVERED_AT` of their box covered;
* ``mean_coverage``: the mean covered share of their boxes;
* ``needless``: the share of all image pixels that are covered but lie in no ground-truth box (of
  any setting: covering a face WIDER ignores is not needless), over all images.

Thresholds chosen by looking at these figures are chosen on one half of the events (:func:`half_of`:
even event numbers, ``tune``) and reported on the other (odd, ``report``).

Re-identification (``--reid --root LFW_DIR``): for each image the default recogniser (``sface``)
embeds the face in the original and the same box in the anonymised copy; a match is a cosine
similarity at or above its LFW threshold for FMR 1e-3 (:data:`faceflow.recognize.CALIBRATION`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.anonymize import CrowdRule, Region, box_coverage, coverage_mask, covered
from faceflow.eval._common import median_ms, run_item, track
from faceflow.eval.cache import ResultCache
from faceflow.eval.wider import SETTINGS, WiderImage, event_parity, load_wider
from faceflow.types import Image

COVERED_AT = 0.8
"""A face counts as covered when at least this share of its box is."""
HALVES = ("tune", "report", "all")


def half_of(key: str) -> str:
    """``tune`` for an image of an even-numbered WIDER event (``"12--Group/..."``), ``report`` for an odd one."""
    return "tune" if event_parity(key) == 0 else "report"


def image_coverage(im: WiderImage, size: tuple[int, int], rows: npt.ArrayLike, threshold: float, shape: str,
                   margin: float, crowd: bool | CrowdRule = False) -> tuple[npt.NDArray[np.float32], int]:
    """Covered share of each ground-truth box and the count of needlessly covered pixels, for the
    predictions ``rows`` (``x1, y1, x2, y2, score``) that :func:`faceflow.anonymize.covered` covers at
    ``threshold`` (scoring at least it; with ``crowd``, weaker ones in a crowd too, as photos are, by
    the photos' rule or the :class:`~faceflow.anonymize.CrowdRule` given)."""
    r = np.asarray(rows, np.float64).reshape(-1, 5)
    kept = r[covered(r[:, :4], r[:, 4], threshold, crowd)]
    regions = [Region(row[:4].astype(np.float32), float(row[4])) for row in kept]
    mask = coverage_mask(size, regions, shape, margin)
    gt = im.boxes_xyxy
    faces = np.zeros(size, bool)
    for x1, y1, x2, y2 in gt:
        faces[max(0, int(y1)):max(0, int(np.ceil(y2))), max(0, int(x1)):max(0, int(np.ceil(x2)))] = True
    return box_coverage(gt, mask), int(np.count_nonzero(mask & ~faces))


def evaluate_anonymize(preds: Mapping[str, npt.ArrayLike], sizes: Mapping[str, tuple[int, int]],
                       gt: Sequence[WiderImage], threshold: float, shape: str = "ellipse",
                       margin: float = 0.25, crowd: bool | CrowdRule = False) -> dict[str, Any]:
    """Coverage per setting and the needless share over ``gt`` (see the module docstring); ``crowd``
    applies the photos' crowd rule or the one given (:func:`faceflow.anonymize.covered`)."""
    per: dict[str, list[npt.NDArray[np.float32]]] = {s: [] for s in SETTINGS}
    needless = pixels = 0
    for im in gt:
        size = sizes[im.key]
        cov, extra = image_coverage(im, size, preds.get(im.key, np.zeros((0, 5))), threshold, shape, margin,
                                    crowd)
        needless += extra
        pixels += size[0] * size[1]
        for s in SETTINGS:
            per[s].append(cov[im.keep[s]])
    out: dict[str, Any] = {"threshold": threshold, "crowd": asdict(crowd) if isinstance(crowd, CrowdRule) else crowd,
                           "images": len(gt),
                           "needless": needless / max(pixels, 1)}
    for s in SETTINGS:
        c = np.concatenate(per[s]) if per[s] else np.zeros(0)
        out[s] = {"faces": len(c), "covered": float(np.mean(c >= COVERED_AT)) if len(c) else None,
                  "mean_coverage": float(np.mean(c)) if len(c) else None}
    return out


@dataclass
class WiderPredictions:
    """A detector's rows (``x1, y1, x2, y2, score``) on the WIDER images of one half, with their sizes."""

    half: str
    gt: list[WiderImage]
    preds: dict[str, npt.NDArray[np.float64]]
    sizes: dict[str, tuple[int, int]]
    """``(height, width)`` per image key."""
    seconds: list[float | None]
    errors: list[dict[str, str]]


def predict_wider(root: Path | str, detect_fn: Callable[[Image], npt.ArrayLike], *, half: str = "all",
                  progress: bool = True, cache: ResultCache | None = None) -> WiderPredictions:
    """Run ``detect_fn`` (RGB image -> ``(N, 5)`` rows) on the WIDER images of ``half`` only (the other
    half's images are never opened), through ``cache``."""
    from PIL import Image as PILImage

    gt = [im for im in load_wider(root) if half == "all" or half_of(im.key) == half]
    out = WiderPredictions(half, gt, {}, {}, [], [])
    for im in track(gt, f"WIDER anonymise ({half})", progress):
        value, secs = run_item(im.path, lambda image: np.asarray(detect_fn(image), np.float64).reshape(-1, 5),
                               cache, out.errors, image=True)
        out.seconds.append(secs)
        out.preds[im.key] = value if value is not None else np.zeros((0, 5))
        with PILImage.open(im.path) as p:  # the header only; EXIF-free WIDER JPEGs need no transpose
            out.sizes[im.key] = (p.height, p.width)
    return out


def run_anonymize_wider(root: Path | str, detect_fn: Callable[[Image], npt.ArrayLike], thresholds: Sequence[float],
                        *, half: str = "all", shape: str = "ellipse", margin: float = 0.25, progress: bool = True,
                        cache: ResultCache | None = None, crowd: bool = False) -> dict[str, Any]:
    """Run ``detect_fn`` on the WIDER images of ``half`` (:func:`predict_wider`) and score each of
    ``thresholds`` (with the photos' crowd rule if ``crowd``); detections are computed once (and
    cached), the thresholds only filter them."""
    run = predict_wider(root, detect_fn, half=half, progress=progress, cache=cache)
    return {"protocol": "wider-anonymize", "half": half, "shape": shape, "margin": margin,
            "by_threshold": [evaluate_anonymize(run.preds, run.sizes, run.gt, t, shape, margin, crowd)
                             for t in thresholds],
            "median_ms": median_ms(run.seconds), "errors": run.errors}


def reidentification(pairs: Sequence[tuple[Image, Image, npt.ArrayLike]], embed: Callable[[Image, Any], Any],
                     threshold: float) -> dict[str, Any]:
    """Share of ``(original, anonymised, box)`` items whose two embeddings of ``box`` match at ``threshold``."""
    sims = []
    for original, hidden, box in pairs:
        a, b = embed(original, box), embed(hidden, box)
        sims.append(float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)))
    s = np.asarray(sims)
    return {"images": len(s), "matches": int(np.sum(s >= threshold)),
            "rate": float(np.mean(s >= threshold)) if len(s) else None,
            "median_similarity": float(np.median(s)) if len(s) else None, "threshold": threshold}
