"""Hand-computed cases for the evaluation protocols, their runners on synthetic data, cache and report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image as PILImage
from rich.console import Console

from faceflow.errors import DatasetError, ImageError
from faceflow.eval import (
    ResultCache,
    WiderImage,
    evaluate_300w,
    evaluate_lfw,
    evaluate_utkface,
    evaluate_wider,
    nme,
    parse_utkface_name,
    print_tables,
    read_pairs,
    roc_curve,
    run_300w,
    run_lfw,
    run_utkface,
    run_wider,
    voc_ap,
    write_report,
)
from faceflow.eval import wider as wider_module
from faceflow.eval.lfw import best_threshold, equal_error_rate, far_threshold, roc_auc

# ---------------------------------------------------------------- LFW


def _auc_eer(scores: list[float], labels: list[bool]) -> tuple[float, float]:
    fpr, tpr, _ = roc_curve(scores, labels)
    return roc_auc(fpr, tpr), equal_error_rate(fpr, tpr)


def test_roc_four_pairs() -> None:
    # positives 0.9, 0.4; negatives 0.6, 0.1: 3 of 4 (pos, neg) pairs ordered right.
    fpr, tpr, thr = roc_curve([0.9, 0.4, 0.6, 0.1], [True, True, False, False])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr[1:], [0.9, 0.6, 0.4, 0.1])
    assert roc_auc(fpr, tpr) == pytest.approx(0.75)
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.5)  # at (FAR 0.5, FRR 0.5)


def test_eer_crossing_inside_a_segment_and_ties() -> None:
    # 0.8P 0.6N 0.5P 0.3P 0.2N: FRR falls from 2/3 to 1/3 at FAR 0.5, so FAR = FRR = 0.5 there.
    assert _auc_eer([0.8, 0.5, 0.3, 0.6, 0.2], [True, True, True, False, False]) == pytest.approx((4 / 6, 0.5))
    # one positive and one negative of equal score: the diagonal, AUC 1/2, EER 1/2
    assert _auc_eer([0.5, 0.5], [True, False]) == pytest.approx((0.5, 0.5))
    assert _auc_eer([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == pytest.approx((1.0, 0.0))


def test_ten_fold_threshold_selection_on_two_toy_folds() -> None:
    # fold 0: pos 0.9 0.7, neg 0.35 0.5; fold 1: pos 0.8 0.4, neg 0.55 0.2
    scores = [0.9, 0.7, 0.35, 0.5, 0.8, 0.4, 0.55, 0.2]
    labels = [True, True, False, False] * 2
    folds = [0] * 4 + [1] * 4
    # training on fold 1: candidates 0.3, 0.475, 0.675 give 3/4, 2/4, 3/4: the lowest, 0.3, wins the tie
    assert best_threshold(scores[4:], labels[4:]) == pytest.approx(0.3)
    # training on fold 0: candidates 0.425, 0.6, 0.8 give 3/4, 4/4, 3/4
    assert best_threshold(scores[:4], labels[:4]) == pytest.approx(0.6)
    r = evaluate_lfw(scores, labels, folds)
    assert r["thresholds"] == pytest.approx([0.3, 0.6])
    # fold 0 at 0.3 -> 2/4 (0.675 would have given 4/4); fold 1 at 0.6 -> 3/4
    assert r["accuracy_mean"] == pytest.approx(0.625)
    assert r["accuracy_std"] == pytest.approx(0.125)  # population std (ddof=0)
    # FAR 1e-3 of 2 training negatives allows floor(0.002) = 0 false accepts:
    # fold 0 uses 0.675 (TAR 2/2), fold 1 uses 0.6 (TAR 1/2)
    assert far_threshold(scores[4:], labels[4:], 1e-3) == pytest.approx(0.675)
    assert r["tar_at_far_1e-3"] == pytest.approx(0.75)
    assert set(r) >= {"accuracy_mean", "accuracy_std", "tar_at_far_1e-3", "roc_auc", "eer"}


def test_per_fold_score_rows() -> None:
    # row k is used only when fold k is tested: thresholds from its training pairs, figures on its test pairs
    scores = np.array([0.9, 0.7, 0.35, 0.5, 0.8, 0.4, 0.55, 0.2])
    labels = [True, True, False, False] * 2
    folds = [0] * 4 + [1] * 4
    plain = evaluate_lfw(scores, labels, folds)
    same = evaluate_lfw(np.stack([scores, scores]), labels, folds)
    assert same["accuracy_mean"] == plain["accuracy_mean"] and same["roc_auc"] == plain["roc_auc"]
    # row 0 serves fold 0's test: its training part (fold 1) is all 9.0, so its one candidate threshold
    # is 9.0 and fold 0 (its test part doubled) is all rejected: 2/4; row 1 is plain: fold 1 gets 3/4
    rows = np.stack([np.r_[scores[:4] * 2, [9.0] * 4], scores])
    r = evaluate_lfw(rows, labels, folds)
    assert r["thresholds"] == pytest.approx([9.0, 0.6])
    assert r["accuracy_mean"] == pytest.approx((0.5 + 0.75) / 2)
    # the ROC is over the test-fold parts of the rows: fold 0 from row 0, fold 1 from row 1
    assert r["roc_auc"] == pytest.approx(evaluate_lfw(np.r_[scores[:4] * 2, scores[4:]], labels, folds)["roc_auc"])
    with pytest.raises(ValueError):
        evaluate_lfw(np.stack([scores] * 3), labels, folds)


def test_far_threshold_allows_floor_of_false_accepts() -> None:
    neg = np.linspace(0, 1, 2700)
    scores = np.r_[neg, [2.0]]
    labels = np.r_[np.zeros(2700, bool), True]
    t = far_threshold(scores, labels, 1e-3)  # floor(2.7) = 2 false accepts allowed
    assert np.sum(neg >= t) == 2 and t == pytest.approx((neg[-3] + neg[-2]) / 2)


def _write_pairs(root: Path, lines: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root / "pairs.txt"


def test_read_pairs_and_its_errors(tmp_path: Path) -> None:
    txt = _write_pairs(tmp_path, ["2\t1", "A 1 2", "A 1 B 3", "C 2 4", "B 1 C 1"])
    pairs = read_pairs(txt)
    assert [(p.same, p.fold) for p in pairs] == [(True, 0), (False, 0), (True, 1), (False, 1)]
    assert pairs[1].path2 == tmp_path / "B" / "B_0003.jpg"
    with pytest.raises(DatasetError, match="promises"):
        read_pairs(_write_pairs(tmp_path / "x", ["2\t2", "A 1 2"]))
    with pytest.raises(DatasetError, match="matched"):
        read_pairs(_write_pairs(tmp_path / "y", ["1", "A 1 B 2", "A 1 2"]))


def test_run_lfw_with_failures_and_fallback(tmp_path: Path) -> None:
    lines = ["2\t2", "A 1 2", "B 1 2", "A 1 B 1", "A 2 B 2", "C 1 2", "D 1 2", "C 1 D 1", "C 2 D 2"]
    _write_pairs(tmp_path, lines)
    person = {"A": [1, 0, 0], "B": [0, 1, 0], "C": [0, 0, 1], "D": [1, 1, 0]}

    def embed(path: Path) -> npt.NDArray[np.float64] | None:
        if path.name == "D_0002.jpg":
            return None  # no face found
        if path.name == "B_0002.jpg":
            raise ImageError("broken", str(path))
        return np.asarray(person[path.parent.name], float)

    r = run_lfw(tmp_path, embed, fallback_fn=lambda p: np.asarray(person[p.parent.name], float), progress=False)
    assert r["detection_failures"] == 1 and r["images"] == 8 and r["pairs"] == 8
    assert len(r["errors"]) == 1 and "broken" in r["errors"][0]["error"]
    assert r["unscored_pairs"] == 0  # both got the fallback
    assert r["accuracy_mean"] == 1.0 and r["roc_auc"] == 1.0 and r["images_per_second"] > 0
    r = run_lfw(tmp_path, embed, progress=False)  # no fallback: pairs with D_0002 or B_0002 score -1
    assert r["unscored_pairs"] == 4 and r["detection_failures"] == 1


# ---------------------------------------------------------------- WIDER


def _wider_image(key: str, boxes: list[list[float]], easy: list[int], others: list[int]) -> WiderImage:
    keep = {"easy": np.array(easy), "medium": np.array(others), "hard": np.array(others)}
    return WiderImage(key, Path(key), np.array(boxes, float), keep)


TWO_IMAGES = [
    # face 1 of image a is outside the easy gt_list (ignored there), inside medium and hard
    _wider_image("e/a.jpg", [[0, 0, 10, 10], [20, 0, 10, 10]], [0], [0, 1]),
    _wider_image("e/b.jpg", [[0, 0, 20, 20]], [0], [0]),
]
TWO_PREDS = {
    "e/a.jpg": np.array([[0, 0, 10, 10, 0.9], [20, 0, 30, 10, 0.8], [50, 50, 60, 60, 0.7]]),
    "e/b.jpg": np.array([[0, 0, 20, 20, 0.6]]),
}


def test_wider_ap_two_images_with_an_ignored_face() -> None:
    r = evaluate_wider(TWO_PREDS, TWO_IMAGES)
    # scores normalise to 1, 2/3, 1/3, 0. easy (2 faces; the 0.8 box hits an ignored face):
    # P/R = 1/0.5 (t > 1/3), 1/2 / 0.5 (t <= 1/3), 2/3 / 1 (t = 0) -> AP = 0.5 * 1 + 0.5 * 2/3
    assert r["easy"] == pytest.approx(0.5 + 1 / 3)
    # medium (3 faces): 1/(1/3), 1/(2/3), (2/3)/(2/3), (3/4)/1 -> AP = 2/3 * 1 + 1/3 * 3/4
    assert r["medium"] == pytest.approx(2 / 3 + 0.25) and r["hard"] == r["medium"]
    # without that face in the ground truth the 0.8 box is a false positive: 0.5 * 1 + 0.5 * 0.5
    no_face = [_wider_image("e/a.jpg", [[0, 0, 10, 10]], [0], [0]), TWO_IMAGES[1]]
    assert evaluate_wider(TWO_PREDS, no_face)["easy"] == pytest.approx(0.75)
    curve = r["curves"]["easy"]
    assert len(curve["precision"]) == 1000 and curve["recall"][-1] == 1.0


def test_wider_plus_one_pixel_iou_duplicates_and_missing_images() -> None:
    gt = [_wider_image("e/c.jpg", [[0, 0, 2, 2]], [0], [0])]
    # continuous IoU of [0,0,0.8,2] with [0,0,2,2] is 0.4; with the +1 convention 5.4 / 9 = 0.6
    assert evaluate_wider({"e/c.jpg": np.array([[0, 0, 0.8, 2, 1.0]])}, gt)["easy"] == 1.0
    # a second box on a recalled face is a false positive; an image without predictions misses its faces
    dup = {"e/c.jpg": np.array([[0, 0, 2, 2, 0.9], [0, 0, 2, 2, 0.5]])}
    assert evaluate_wider(dup, gt)["easy"] == 1.0  # the duplicate only comes after full recall
    assert evaluate_wider({}, gt)["easy"] == 0.0
    both = [*gt, _wider_image("e/d.jpg", [[5, 5, 4, 4]], [0], [0])]
    assert evaluate_wider(dup, both)["easy"] == pytest.approx(0.5)


def test_voc_ap_envelope() -> None:
    assert voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(0.5 + 1 / 3)
    assert voc_ap([0.2, 0.4], [0.5, 1.0]) == pytest.approx(0.4)


def test_run_wider_on_synthetic_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = []
    for k, box in enumerate([[4, 4, 8, 8], [2, 3, 10, 6]]):
        path = tmp_path / f"{k}.png"
        PILImage.fromarray(np.full((20, 20, 3), k, np.uint8)).save(path)
        images.append(WiderImage(f"e/{k}.jpg", path, np.array([box], float), {s: np.array([0]) for s in
                                                                            ("easy", "medium", "hard")}))
    monkeypatch.setattr(wider_module, "load_wider", lambda root: images)

    def detect(image: npt.NDArray[np.uint8]) -> list[list[float]]:
        x, y, w, h = images[int(image[0, 0, 0])].boxes[0]
        return [[x, y, x + w, y + h, 0.9], [0, 0, 1, 1, 0.1]]

    cache = ResultCache("synthetic detector", root=tmp_path / "cache")
    r = run_wider(tmp_path, detect, progress=False, cache=cache)
    assert r["images"] == 2 and r["easy"] == 1.0 and r["median_ms"] >= 0
    r2 = run_wider(tmp_path, lambda image: pytest.fail("cache miss"), progress=False, cache=cache)
    assert r2["easy"] == r["easy"] and r2["median_ms"] == r["median_ms"]


# ---------------------------------------------------------------- 300-W


def _face68(scale: float = 1.0) -> npt.NDArray[np.float64]:
    pts = np.zeros((68, 2))
    pts[:, 0] = np.linspace(0, 20, 68) * scale
    pts[36], pts[45] = [0, 0], [10 * scale, 0]  # outer eye corners 10 px apart
    return pts


def test_nme_normalised_by_outer_eye_corners() -> None:
    gt = _face68()
    assert nme(gt + np.array([1.0, 0.0]), gt) == pytest.approx(0.1)
    assert nme(gt + np.array([0.0, 0.5]), gt) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        nme(gt[:5], gt)


def test_ced_three_points() -> None:
    r = evaluate_300w([0.02, 0.05, None])
    # AUC = (1/0.1) * integral_0^0.1 CED = mean(max(0, 1 - e/0.1)) = (0.8 + 0.5 + 0) / 3
    assert r["auc_0.1"] == pytest.approx(1.3 / 3)
    grid = np.linspace(0, 0.1, 100_001)
    ced = np.array([(np.array([0.02, 0.05]) <= g).sum() / 3 for g in grid[::100]])
    trapezoid = np.sum((ced[1:] + ced[:-1]) / 2 * np.diff(grid[::100])) / 0.1
    assert trapezoid == pytest.approx(r["auc_0.1"], abs=1e-3)  # the grid rule converges to it
    assert r["failure_rate"] == pytest.approx(1 / 3) and r["missed"] == 1 and r["images"] == 3
    assert r["nme_mean"] == pytest.approx(0.035) and r["nme_median"] == pytest.approx(0.035)
    r = evaluate_300w([0.02, 0.05, 0.2, None])
    assert r["failure_rate"] == 0.5 and r["auc_0.1"] == pytest.approx(1.3 / 4)
    assert evaluate_300w([None])["nme_mean"] is None


def test_run_300w_on_synthetic_files(tmp_path: Path) -> None:
    for k in range(3):
        PILImage.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / f"{k}.jpg")
        body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in _face68(1 + k))
        (tmp_path / f"{k}.pts").write_text(f"version: 1\nn_points:  68\n{{\n{body}\n}}\n")

    def landmarks(image: npt.NDArray[np.uint8], gt: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
        assert image.shape == (30, 30, 3)
        return None if gt[45, 0] > 25 else gt + np.array([0.5 * gt[45, 0] / 10, 0])  # NME 0.05, or missed

    r = run_300w(tmp_path, landmarks, progress=False)
    assert r["images"] == 3 and r["missed"] == 1 and r["nme_mean"] == pytest.approx(0.05)
    assert r["failure_rate"] == pytest.approx(1 / 3) and r["median_ms"] is not None
    PILImage.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "3.jpg")
    (tmp_path / "3.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    with pytest.raises(DatasetError, match="68 points"):
        run_300w(tmp_path, landmarks, progress=False)


# ---------------------------------------------------------------- UTKFace


def test_utkface_names() -> None:
    assert parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg") == (26, "female", "asian")
    assert parse_utkface_name("3_0_0_20170110213010001.jpg.chip.jpg") == (3, "male", "white")
    for bad in ("39_1_20170116174525125.jpg.chip.jpg", "61_3_0_20170109150557335.jpg.chip.jpg",
                "26_1_2_20170116174525125.jpg", "x_1_2_3.jpg.chip.jpg"):
        assert parse_utkface_name(bad) is None


def test_utkface_metrics_and_no_face() -> None:
    r = evaluate_utkface([20, 30, 40, 50, 60], [25, 36, None, 50, None],
                         ["male", "female", "male", "female", "male"], ["male", "male", "male", None, None])
    assert r["age_mae"] == pytest.approx(11 / 3) and r["cs5"] == pytest.approx(2 / 3)
    assert r["gender_accuracy"] == pytest.approx(2 / 3)
    assert (r["n"], r["n_age"], r["n_gender"], r["no_face"]) == (4, 3, 3, 1)
    with pytest.raises(ValueError):
        evaluate_utkface([1], [1], ["male"], ["0"])


def test_run_utkface_with_split_and_skipped(tmp_path: Path) -> None:
    names = ["20_0_0_1.jpg.chip.jpg", "30_1_1_2.jpg.chip.jpg", "40_1_2_3.jpg.chip.jpg", "bad_name.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"")

    def predict(path: Path) -> tuple[float | None, str | None]:
        age = int(path.name.split("_")[0])
        return (None, None) if age == 40 else (age + 4, "female")

    r = run_utkface(tmp_path, predict, progress=False)
    assert (r["images"], r["skipped"], r["no_face"], r["n"]) == (3, 1, 1, 2)
    assert r["age_mae"] == 4 and r["cs5"] == 1 and r["gender_accuracy"] == 0.5
    split = tmp_path / "split.txt"
    split.write_text("# held out\n30_1_1_2.jpg.chip.jpg\n")
    assert run_utkface(tmp_path, predict, split=split, progress=False)["images"] == 1
    split.write_text("99_1_1_2.jpg.chip.jpg\n")
    with pytest.raises(DatasetError):
        run_utkface(tmp_path, predict, split=split, progress=False)


# ---------------------------------------------------------------- cache and report


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFLOW_HOME", str(tmp_path / "home"))
    f = tmp_path / "img.jpg"
    f.write_bytes(b"pixels")
    cache = ResultCache("model-a s=0.5")
    assert cache.dir.parent == tmp_path / "home" / "eval-cache"
    assert cache.get(f) == (False, None, 0.0)
    for value in (None, np.arange(6.0).reshape(2, 3), [31.5, "female"]):
        cache.put(f, value, 0.25)
        hit, got, secs = cache.get(f)
        assert hit and secs == 0.25
        np.testing.assert_equal(got, value)
    assert cache.call(f, lambda: pytest.fail("cache miss")) == ([31.5, "female"], 0.25)
    other = ResultCache("model-b")
    assert other.call(f, lambda: ("x", 1.0)) == ("x", 1.0) and other.get(f)[0]
    (tmp_path / "copy.jpg").write_bytes(b"pixels")  # same content, same entry
    assert other.get(tmp_path / "copy.jpg") == (True, "x", 1.0)


def test_report_tables_json_and_plots(tmp_path: Path) -> None:
    folds = [0] * 4 + [1] * 4
    results = {
        "toy-lfw": evaluate_lfw([0.9, 0.7, 0.35, 0.5, 0.8, 0.4, 0.55, 0.2], [True, True, False, False] * 2, folds),
        "toy-wider": evaluate_wider(TWO_PREDS, TWO_IMAGES),
        "toy-300w": evaluate_300w([0.02, 0.05, None]),
        "toy-utk": evaluate_utkface([20, 30], [25, 36], ["male", "female"], ["male", "male"]),
    }
    console = Console(record=True, width=200)
    print_tables(results, console)
    text = console.export_text()
    assert "62.50 %" in text and "0.8333" in text and "0.4333" in text
    md = write_report(results, tmp_path / "report")
    body = md.read_text()
    for name in ("lfw", "wider", "300w", "utkface"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 1000
        assert f"({name}.png)" in body
    assert "| toy-lfw | 62.50 % | 12.50 % |" in body
    import json

    data = json.loads((tmp_path / "report" / "results.json").read_text())
    assert data["toy-300w"]["auc_0.1"] == pytest.approx(1.3 / 3) and "curves" not in data["toy-lfw"]
