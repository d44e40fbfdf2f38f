"""The evaluation loaders on the real data in ``../shared/datasets`` (skipped when it is absent)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from faceflow.eval import evaluate_wider, load_300w, load_utkface, load_wider, read_pairs

Dataset = Callable[..., Path]


def test_lfw_pairs_view2(dataset: Dataset) -> None:
    pairs = read_pairs(dataset("lfw", "pairs.txt"))
    assert len(pairs) == 6000 and sum(p.same for p in pairs) == 3000
    per_fold = Counter((p.fold, p.same) for p in pairs)
    assert per_fold == {(f, s): 300 for f in range(10) for s in (True, False)}
    paths = {q for p in pairs for q in (p.path1, p.path2)}
    assert len(paths) == 7701 and all(q.is_file() for q in paths)
    first = pairs[0]
    assert first.path1.name == "Abel_Pacheco_0001.jpg" and first.path2.name == "Abel_Pacheco_0004.jpg"


def test_wider_ground_truth_as_predictions(dataset: Dataset) -> None:
    gt = load_wider(dataset("wider"))
    assert len(gt) == 305 and sum(len(im.boxes) for im in gt) == 11141
    assert {s: sum(len(im.keep[s]) for im in gt) for s in ("easy", "medium", "hard")} == {
        "easy": 608, "medium": 1459, "hard": 8986}
    preds = {im.key: np.c_[im.boxes_xyxy, np.ones(len(im.boxes))] for im in gt}
    r = evaluate_wider(preds, gt)
    assert r["easy"] == 1.0 and r["medium"] == 1.0
    assert 0.9995 <= r["hard"] < 1.0  # one duplicated hard box: its copy is a false positive


def test_300w_helen_test_set(dataset: Dataset) -> None:
    items = load_300w(dataset("300w"))
    assert len(items) == 330
    assert all(im.points.shape == (68, 2) and im.path.is_file() for im in items)


def test_utkface_names(dataset: Dataset) -> None:
    images, skipped = load_utkface(dataset("utkface"))
    assert len(images) == 4000 and skipped == 0
    assert Counter(im.gender for im in images) == {"male": 2002, "female": 1998}
    assert all(0 <= im.age <= 116 for im in images)
    sample = next(im for im in images if im.path.name.split("_")[1] == "1")
    assert sample.gender == "female"
