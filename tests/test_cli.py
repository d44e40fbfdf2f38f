"""The CLI end to end, as a user runs it: exit codes, faces.jsonl, annotated images, verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

FACEFLOW = [sys.executable, "-m", "faceflow.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FACEFLOW, *map(str, args)], capture_output=True, text=True, timeout=600)


def read_jsonl(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


def fraction_inside(points: list[list[float]], box: list[float], margin: float = 0.0) -> float:
    p = np.array(points)
    x1, y1, x2, y2 = np.array(box, dtype=float) + np.array([-margin, -margin, margin, margin])
    return float(((p[:, 0] >= x1) & (p[:, 0] <= x2) & (p[:, 1] >= y1) & (p[:, 1] <= y2)).mean())


def test_analyze_astronaut(tmp_path: Path, astronaut: np.ndarray) -> None:
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    PILImage.fromarray(astronaut).save(src / "astronaut.jpg")
    proc = run("analyze", tmp_path / "in", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    (rec,) = read_jsonl(tmp_path / "out" / "faces.jsonl")
    assert rec["error"] is None and rec["width"] == 512 and len(rec["faces"]) == 1
    face = rec["faces"][0]
    for key in ("box", "score", "landmarks5", "pose", "age", "gender", "expression"):
        assert key in face
    assert set(face["pose"]) == {"yaw", "pitch", "roll"}
    assert (tmp_path / "out" / "annotated" / "sub" / "astronaut.jpg").is_file()


def test_usage_errors_exit_2(tmp_path: Path, astronaut: np.ndarray) -> None:
    img = tmp_path / "a.png"
    PILImage.fromarray(astronaut).save(img)
    assert run("analyze", img, "--detector", "nope", "--out", tmp_path / "o").returncode == 2
    assert run("analyze", img, "--stages", "detect,bogus", "--out", tmp_path / "o").returncode == 2
    assert run("analyze").returncode == 2


def test_group_photo_all_six_faces(tmp_path: Path, dataset) -> None:  # type: ignore[no-untyped-def]
    t1 = dataset("samples", "insightface_data", "t1.jpg")
    proc = run("analyze", t1, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    (rec,) = read_jsonl(tmp_path / "faces.jsonl")
    assert len(rec["faces"]) == 6
    for face in rec["faces"]:
        assert fraction_inside(face["landmarks5"], face["box"]) == 1.0
        # The jaw line of a turned head may leave the detector's box by a few pixels.
        assert fraction_inside(face["landmarks68"], face["box"], margin=3) >= 0.9


def test_good_and_broken_files(tmp_path: Path, dataset) -> None:  # type: ignore[no-untyped-def]
    good = dataset("samples", "face_recognition", "tests", "test_images")
    broken = dataset("samples", "broken")
    proc = run("analyze", good, broken, "--out", tmp_path)
    assert proc.returncode == 1
    recs = {Path(r["path"]).name: r for r in read_jsonl(tmp_path / "faces.jsonl")}
    n_good = len([p for p in good.iterdir() if p.is_file()])
    assert len(recs) == n_good + 5
    for name in ("empty.jpg", "truncated.jpg", "text.jpg", "bomb.png"):
        assert recs[name]["error"] and recs[name]["faces"] == []
    assert recs["zero_faces.png"]["error"] is None and recs["zero_faces.png"]["faces"] == []
    for p in good.iterdir():
        assert recs[p.name]["error"] is None and len(recs[p.name]["faces"]) >= 1, p.name


@pytest.mark.parametrize("model", ["sface", "dlib"])
def test_verify_same_and_different(dataset, model: str) -> None:  # type: ignore[no-untyped-def]
    train = dataset("samples", "face_recognition", "examples", "knn_examples", "train")
    same = run("verify", train / "obama" / "obama.jpg", train / "obama" / "obama2.jpg", "--model", model, "--json")
    assert same.returncode == 0, same.stderr
    v = json.loads(same.stdout)
    assert v["same"] is True and v["similarity"] > v["threshold"]
    diff = run("verify", train / "obama" / "obama.jpg", train / "biden" / "biden.jpg", "--model", model, "--json")
    v = json.loads(diff.stdout)
    assert v["same"] is False and v["similarity"] < v["threshold"]
    text = run("verify", train / "biden" / "biden.jpg", train / "biden" / "biden2.jpg", "--model", model)
    assert text.stdout.startswith("same person") and "threshold" in text.stdout


def test_models_list_and_verify() -> None:
    proc = run("models", "list")
    assert proc.returncode == 0 and "yunet" in proc.stdout and "Apache-2.0" in proc.stdout
    assert run("models", "verify").returncode == 0


@pytest.mark.parametrize("source", ["cydral", "heads"])
def test_eval_utkface_with_either_age_gender_source(tmp_path: Path, astronaut: np.ndarray, source: str) -> None:
    """``faceflow eval utkface`` on a folder of UTKFace-named images (labels in the names: age 40,
    female), with the default networks and with the trained heads; an unparseable name is skipped."""
    root = tmp_path / "utk"
    root.mkdir()
    PILImage.fromarray(astronaut).save(root / "40_1_0_20170110225243501.jpg.chip.jpg")
    PILImage.fromarray(astronaut[:, ::-1]).save(root / "40_1_0_20170110225243502.jpg.chip.jpg")
    PILImage.fromarray(astronaut).save(root / "no_label.jpg")
    out = tmp_path / "r.json"
    proc = run("eval", "utkface", "--root", root, "--age-gender", source, "--no-cache", "--json", out)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(out.read_text()).values()
    assert result["age_gender"] == source and result["n"] == 2 and result["skipped"] == 1
    assert result["gender_accuracy"] == 1.0 and result["age_mae"] < 25


def test_verify_says_which_face_of_a_group_photo_it_compared(dataset) -> None:  # type: ignore[no-untyped-def]
    from faceflow.detect import create_detector
    from faceflow.io import load_image

    knn = dataset("samples", "face_recognition", "examples", "knn_examples")
    group, single = knn / "test" / "obama_and_biden.jpg", knn / "train" / "obama" / "obama.jpg"
    proc = run("verify", group, single, "--json")
    assert proc.returncode == 0, proc.stderr
    v = json.loads(proc.stdout)
    faces = create_detector("yunet").detect(load_image(group))
    assert len(faces) >= 2 and v["faces_found"] == [len(faces), 1]
    largest = max(faces, key=lambda f: f.width * f.height)
    np.testing.assert_allclose(v["boxes"][0], largest.box, atol=0.01)  # the box of the face compared
    warning = " ".join(proc.stderr.split())
    box_text = "[" + ", ".join(f"{x:.0f}" for x in v["boxes"][0]) + "]"
    assert f"obama_and_biden.jpg shows {len(faces)} faces; compared the largest, at {box_text}" in warning
    text = run("verify", group, single)
    assert f"obama_and_biden.jpg {box_text}" in text.stdout and f"shows {len(faces)} faces" in text.stderr
    alone = run("verify", single, knn / "train" / "obama" / "obama2.jpg")
    assert alone.returncode == 0 and "warning" not in alone.stderr  # one face each: nothing to warn about


def test_verify_without_a_face_exits_1(dataset) -> None:  # type: ignore[no-untyped-def]
    samples = dataset("samples")
    proc = run("verify", samples / "broken" / "zero_faces.png",
               samples / "face_recognition" / "examples" / "obama.jpg")
    assert proc.returncode == 1 and "zero_faces.png: no face found" in " ".join(proc.stderr.split())
