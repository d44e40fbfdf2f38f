"""300-W 68-point landmarks: ``.pts`` files, NME, failure rate, CED AUC, and a runner.

* **NME** of an image: mean point-to-point distance over the 68 points divided by the distance
  between the outer eye corners of the ground truth (0-based points 36 and 45).
* ``nme_mean`` / ``nme_median`` over the images where a face was found; ``failure_rate`` (NME > 0.1)
  and ``auc_0.1`` over **all** images, a missed face counting as a failure (infinite NME).
* **AUC@0.1**: the exact integral of the empirical CED (the step function ``CED(e)`` = fraction of
  images with NME <= e) from 0 to 0.1, divided by 0.1, i.e. ``mean(max(0, 1 - NME / 0.1))``. The
  trapezoid rule on a fine threshold grid converges to it (within the grid step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import DatasetError
from faceflow.eval._common import maybe, median_ms, run_item, track
from faceflow.eval.cache import ResultCache
from faceflow.types import Image

OUTER_EYE_CORNERS = (36, 45)
LandmarksFn = Callable[[Image, npt.NDArray[np.float64]], "npt.ArrayLike | None"]
"""``landmarks_fn(rgb_image, gt68) -> (68, 2)`` points, or ``None`` when no face was found.

The ground truth is given only to pick, among several faces found, the one nearest its centre.
"""


@dataclass(frozen=True)
class W300Image:
    """One annotated image and its ``(68, 2)`` ground-truth points (image pixels)."""

    path: Path
    points: npt.NDArray[np.float64]


def read_pts(path: Path | str) -> npt.NDArray[np.float64]:
    """Points of a 300-W ``.pts`` file (``version``, ``n_points``, ``{``, ``x y`` lines, ``}``)."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        header = dict(ln.split(":", 1) for ln in lines[: lines.index("{")])
        n = int(header["n_points"])
        body = lines[lines.index("{") + 1 : lines.index("}")]
        points = np.array([[float(v) for v in ln.split()] for ln in body], np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: not a readable .pts file ({exc})") from exc
    if points.shape != (n, 2):
        raise DatasetError(f"{path}: header says {n} points, found shape {points.shape}")
    return points


def load_300w(root: Path | str) -> list[W300Image]:
    """Every ``.pts`` under ``root`` (recursively, sorted) with its image of the same stem."""
    root = Path(root)
    out = []
    for pts in sorted(root.rglob("*.pts")):
        image = next((p for p in (pts.with_suffix(s) for s in (".jpg", ".png")) if p.is_file()), None)
        if image is None:
            raise DatasetError(f"{pts}: no image beside it (.jpg or .png)")
        out.append(W300Image(image, read_pts(pts)))
    if not out:
        raise DatasetError(f"no .pts annotations under {root}")
    return out


def nme(pred: npt.ArrayLike, gt: npt.ArrayLike) -> float:
    """Mean point error normalised by the ground truth's outer-eye-corner distance."""
    p, g = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    a, b = OUTER_EYE_CORNERS
    return float(np.linalg.norm(p - g, axis=1).mean() / np.linalg.norm(g[a] - g[b]))


def evaluate_300w(errors: Sequence[float | None], threshold: float = 0.1) -> dict[str, Any]:
    """Figures from per-image NMEs, ``None`` for an image where no face was found.

    Returns ``nme_mean``, ``nme_median`` (over found faces; ``None`` if none), ``failure_rate``,
    ``auc_0.1``, ``missed``, ``images`` and ``curves`` (``nme``: the NMEs of found faces).
    """
    found = np.array([e for e in errors if e is not None], np.float64)
    n = len(errors)
    if n == 0:
        raise ValueError("no images to evaluate")
    return {
        "protocol": "300w",
        "nme_mean": maybe(found.mean()) if found.size else None,
        "nme_median": maybe(np.median(found)) if found.size else None,
        "failure_rate": float((n - np.sum(found <= threshold)) / n),
        f"auc_{threshold:g}": float(np.sum(np.clip(1 - found / threshold, 0, None)) / n),
        "missed": n - int(found.size),
        "images": n,
        "curves": {"nme": np.sort(found), "images": n, "threshold": threshold},
    }


def run_300w(
    root: Path | str, landmarks_fn: LandmarksFn, progress: bool = True, cache: ResultCache | None = None
) -> dict[str, Any]:
    """Run ``landmarks_fn`` on every annotated image under ``root`` and evaluate.

    ``landmarks_fn(image, gt68)`` gets the decoded RGB image (decoding is not timed) and the
    ground truth, to be used only to choose among several faces. ``None``, or a
    :class:`~faceflow.errors.FaceflowError` (recorded in ``errors``), counts as a missed face.
    Adds ``median_ms`` to :func:`evaluate_300w`'s figures.
    """

    def landmarks(image: Image, gt: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
        pts = landmarks_fn(image, gt)
        return None if pts is None else np.asarray(pts, np.float64).reshape(gt.shape)

    items = load_300w(root)
    nmes: list[float | None] = []
    seconds: list[float | None] = []
    errors: list[dict[str, str]] = []
    for im in track(items, "300-W", progress):
        pts, secs = run_item(im.path, landmarks, cache, errors, image=True, extra=(im.points,))
        seconds.append(secs)
        nmes.append(None if pts is None else nme(pts, im.points))
    result = evaluate_300w(nmes)
    result.update(median_ms=median_ms(seconds), errors=errors)
    return result
