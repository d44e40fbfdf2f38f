"""The evaluation loaders on the real data in ``../shared/datasets`` (skipped when it is absent)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

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


def _lfw_layout(root: Path, image: np.ndarray, header: str, lines: list[str]) -> Path:
    """A tiny LFW layout: ``pairs.txt`` and every image it names, each a copy of ``image``."""
    from PIL import Image as PILImage

    root.mkdir()
    for line in lines:
        t = line.split()
        for name, number in ([(t[0], t[1]), (t[0], t[2])] if len(t) == 3 else [(t[0], t[1]), (t[2], t[3])]):
            if number.isdigit():
                (root / name).mkdir(exist_ok=True)
                PILImage.fromarray(image).save(root / name / f"{name}_{int(number):04d}.jpg")
    (root / "pairs.txt").write_text(header + "\n" + "\n".join(lines) + "\n")
    return root


def test_lfw_pairs_with_a_bad_image_number_or_one_fold_are_dataset_errors(tmp_path: Path,
                                                                          astronaut: np.ndarray) -> None:
    """A malformed line names the file and line; a single fold cannot give 10-fold-style figures.
    Before: ValueError from int() and from the fold count, with a traceback."""
    from faceflow.errors import DatasetError
    from faceflow.eval.lfw import run_lfw

    bad = _lfw_layout(tmp_path / "bad", astronaut, "2\t1", ["A 1 2", "A 1 B 1", "B x 2", "A 2 B 2"])
    with pytest.raises(DatasetError, match=r"pairs\.txt:4: image number 'x' is not a whole number"):
        read_pairs(bad / "pairs.txt")
    one = _lfw_layout(tmp_path / "one", astronaut, "2", ["A 1 2", "B 1 2", "A 1 B 1", "A 2 B 2"])
    with pytest.raises(DatasetError, match=r"pairs\.txt: 1 fold; the protocol needs at least 2"):
        run_lfw(one, lambda p: np.ones(4, np.float32), progress=False)


def test_lfw_image_missing_from_the_layout_is_an_item_error(tmp_path: Path, astronaut: np.ndarray,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With the result cache on, an image that ``pairs.txt`` names but the folder lacks is recorded
    against its path and its pairs go unscored; before, hashing it for the cache raised FileNotFoundError."""
    from faceflow.eval.tasks import eval_lfw

    monkeypatch.setenv("FACEFLOW_HOME", str(tmp_path / "home"))
    root = _lfw_layout(tmp_path / "lfw", astronaut, "2\t1", ["A 1 2", "A 1 B 1", "B 1 2", "A 2 B 2"])
    (root / "B" / "B_0002.jpg").unlink()
    result = eval_lfw(root, model="sface", flip=False, progress=False)
    assert [e["path"] for e in result["errors"]] == [str(root / "B" / "B_0002.jpg")]
    assert "file not found" in result["errors"][0]["error"]
    assert result["unscored_pairs"] == 2 and result["images"] == 4 and result["detection_failures"] == 0


@pytest.mark.parametrize("content", ["not a mat", "wrong structure", "missing"])
def test_wider_ground_truth_that_is_not_wider_s_is_a_dataset_error(tmp_path: Path, content: str) -> None:
    """A ``.mat`` that is not a MATLAB file, one with other variables of other shapes, or none at all:
    one DatasetError naming the file. Before: scipy's MatReadError or an IndexError, with a traceback."""
    from scipy.io import savemat

    from faceflow.errors import DatasetError

    gt = tmp_path / "ground_truth"
    gt.mkdir()
    (tmp_path / "WIDER_val" / "images").mkdir(parents=True)
    for name in ("wider_face_val", "wider_easy_val", "wider_medium_val", "wider_hard_val"):
        if content == "not a mat":
            (gt / f"{name}.mat").write_text("hello")
        elif content == "wrong structure":
            savemat(gt / f"{name}.mat", {k: np.zeros((2, 1)) for k in
                                         ("event_list", "file_list", "face_bbx_list", "gt_list")})
    with pytest.raises(DatasetError, match=r"wider_face_val\.mat: (not a MATLAB file|not the WIDER FACE "
                                           r"ground truth|no such file)"):
        load_wider(tmp_path)
