"""UTKFace age and gender: labels from file names, MAE / CS(5) / gender accuracy, and a runner.

File names are ``<age>_<gender>_<race>_<date>.jpg.chip.jpg`` with gender 0 = male, 1 = female
(converted here to ``"male"`` / ``"female"``, and nowhere else). Images whose name does not parse
are skipped and counted. An image where the model finds no face (``predict_fn`` returns
``(None, None)``) is counted in ``no_face`` and left out of every metric (so ``n`` is the number of
images with a prediction, as the reference's n = 3,962 of 4,000); a single ``None`` leaves the
image out of that one metric only (``n_age``, ``n_gender``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceflow.errors import DatasetError
from faceflow.eval._common import maybe, median_ms, run_item, track
from faceflow.eval.cache import ResultCache
from faceflow.io import IMAGE_SUFFIXES

GENDERS = ("male", "female")
RACES = ("white", "black", "asian", "indian", "others")
_NAME = re.compile(r"(\d{1,3})_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg")
PredictFn = Callable[[Path], "tuple[float | None, str | None]"]
"""``predict_fn(path) -> (age in years | None, "male" | "female" | None)``; ``(None, None)`` = no face."""


@dataclass(frozen=True)
class UTKFaceImage:
    """One labelled image."""

    path: Path
    age: int
    gender: str
    race: str


def parse_utkface_name(name: str) -> tuple[int, str, str] | None:
    """``(age, gender, race)`` from a UTKFace file name, or ``None`` when it does not parse."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    return int(m[1]), GENDERS[int(m[2])], RACES[int(m[3])]


def _read_split(split: Path | str) -> set[str]:
    try:
        lines = Path(split).read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read split file {split}: {exc}") from exc
    return {Path(ln.strip()).name for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}


def load_utkface(root: Path | str, split: Path | str | None = None) -> tuple[list[UTKFaceImage], int]:
    """``(images, skipped)``: the labelled images under ``root`` (recursively, sorted by name).

    ``split`` is a file listing file names (one a line, ``#`` comments) to restrict to; a name it
    lists that is not under ``root`` raises :class:`DatasetError`. ``skipped`` counts image files
    (within the split, if any) whose names do not parse.
    """
    root = Path(root)
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.name)
    if split is not None:
        wanted = _read_split(split)
        files = [p for p in files if p.name in wanted]
        missing = wanted - {p.name for p in files}
        if missing:
            raise DatasetError(f"{len(missing)} names of {split} are not under {root}, e.g. {min(missing)}")
    images, skipped = [], 0
    for p in files:
        labels = parse_utkface_name(p.name)
        if labels is None:
            skipped += 1
        else:
            images.append(UTKFaceImage(p, *labels))
    if not images:
        raise DatasetError(f"no UTKFace images (<age>_<gender>_<race>_<date>.jpg.chip.jpg) under {root}")
    return images, skipped


def evaluate_utkface(
    true_ages: Sequence[float],
    pred_ages: Sequence[float | None],
    true_genders: Sequence[str],
    pred_genders: Sequence[str | None],
) -> dict[str, Any]:
    """``age_mae``, ``cs5`` (fraction with \\|error\\| <= 5 years), ``gender_accuracy``, counts, curves."""
    if not len(true_ages) == len(pred_ages) == len(true_genders) == len(pred_genders):
        raise ValueError("all four sequences must have the same length")
    bad = {g for g in pred_genders if g is not None} - set(GENDERS)
    if bad:
        raise ValueError(f"gender predictions must be 'male' or 'female', got {sorted(bad)}")
    has_age = np.array([a is not None for a in pred_ages], bool)
    has_gender = np.array([g is not None for g in pred_genders], bool)
    err = np.array([p - t for p, t in zip(pred_ages, true_ages, strict=True) if p is not None], np.float64)
    right = np.array([p == t for p, t in zip(pred_genders, true_genders, strict=True) if p is not None])
    return {
        "protocol": "utkface",
        "age_mae": maybe(np.abs(err).mean()) if err.size else None,
        "cs5": maybe(np.mean(np.abs(err) <= 5)) if err.size else None,
        "gender_accuracy": maybe(right.mean()) if right.size else None,
        "n": int(np.sum(has_age | has_gender)),
        "n_age": int(has_age.sum()),
        "n_gender": int(has_gender.sum()),
        "no_face": int(np.sum(~has_age & ~has_gender)),
        "curves": {"age_error": err},
    }


def run_utkface(
    root: Path | str,
    predict_fn: PredictFn,
    split: Path | str | None = None,
    progress: bool = True,
    cache: ResultCache | None = None,
) -> dict[str, Any]:
    """Run ``predict_fn`` on every labelled image (of ``split``, if given) and evaluate.

    ``predict_fn(path)`` returns ``(age, gender)`` with gender ``"male"`` / ``"female"``, ``None``
    for what it cannot tell, ``(None, None)`` when it finds no face. A
    :class:`~faceflow.errors.FaceflowError` is recorded in ``errors`` and counts as no face.
    Adds ``skipped``, ``images`` and ``median_ms`` to :func:`evaluate_utkface`'s figures.
    """

    def predict(path: Path) -> list[Any]:
        age, gender = predict_fn(path)
        return [None if age is None else float(age), gender]

    images, skipped = load_utkface(root, split)
    preds: list[Any] = []
    seconds: list[float | None] = []
    errors: list[dict[str, str]] = []
    for im in track(images, "UTKFace", progress):
        value, secs = run_item(im.path, predict, cache, errors)
        preds.append(value or [None, None])
        seconds.append(secs)
    result = evaluate_utkface(
        [im.age for im in images], [p[0] for p in preds], [im.gender for im in images], [p[1] for p in preds]
    )
    result.update(skipped=skipped, images=len(images), median_ms=median_ms(seconds), errors=errors)
    return result
