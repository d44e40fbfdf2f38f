"""The CLI end to end, as a user runs it: exit codes, faces.jsonl, annotated images, verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner, Result

from faceflow.cli import app

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


def test_eval_reports_broken_images_and_exits_1(tmp_path: Path, astronaut: np.ndarray) -> None:
    """A broken image among good ones is evaluated as failed, named on stderr and in the JSON (once),
    and the run exits 1, as every batch does; before, the table only showed it as "no face" and exit 0."""
    root = tmp_path / "utk"
    root.mkdir()
    PILImage.fromarray(astronaut).save(root / "40_1_0_20170110225243501.jpg.chip.jpg")
    (root / "41_1_0_20170110225243502.jpg.chip.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "r.json"
    proc = run("eval", "utkface", "--root", root, "--no-cache", "--json", out)
    assert proc.returncode == 1, proc.stderr
    stderr = " ".join(proc.stderr.split())
    assert "1 of 2 items failed" in stderr and "41_1_0_20170110225243502.jpg.chip.jpg: not a recognised" in stderr
    (result,) = json.loads(out.read_text()).values()
    assert [e["path"] for e in result["errors"]] == [str(root / "41_1_0_20170110225243502.jpg.chip.jpg")]


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


# --- a batch never aborts, and says what it did ------------------------------------------------------------


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    """``faceflow`` in this process (models load once for all such tests); stderr kept apart."""
    return CliRunner(env=env).invoke(app, [str(a) if not isinstance(a, bytes) else os.fsdecode(a) for a in args])


@pytest.fixture(scope="module")
def small_face(astronaut: np.ndarray) -> PILImage.Image:
    """The astronaut at 256x256: one face, quick to analyse."""
    return PILImage.fromarray(astronaut).resize((256, 256))


def test_a_name_that_is_not_utf8(tmp_path: Path, small_face: PILImage.Image) -> None:
    """cv2.imwrite crashed the process (SIGSEGV) on such a name and faces.jsonl stayed empty."""
    src = tmp_path / "in"
    src.mkdir()
    name = os.fsencode(src) + b"/caf\xe9 \xff.jpg"
    small_face.save(os.fsdecode(name), format="JPEG")
    small_face.save(src / "ok.png")
    proc = subprocess.run([*FACEFLOW, "analyze", src, "--out", tmp_path / "out"], capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = (tmp_path / "out" / "faces.jsonl").read_bytes().decode("utf-8")  # strict: valid UTF-8
    recs = [json.loads(line) for line in text.splitlines()]
    assert [r["path"] for r in recs] == [f"{src}/caf\\xe9 \\xff.jpg", f"{src}/ok.png"]
    assert all(r["error"] is None and len(r["faces"]) == 1 for r in recs)
    annotated = sorted(os.listdir(os.fsencode(tmp_path / "out" / "annotated")))
    assert annotated == [b".faceflow-annotated", b"caf\xe9 \xff.jpg", b"ok.png"]


def test_verify_prints_a_name_that_is_not_utf8(tmp_path: Path, small_face: PILImage.Image) -> None:
    """verify's text line printed the raw name: on a strict UTF-8 stdout (a UTF-8 locale other than C,
    PYTHONIOENCODING=utf-8) it died in a UnicodeEncodeError traceback after the comparison had run."""
    name = os.fsencode(tmp_path) + b"/caf\xe9 \xff.jpg"
    small_face.save(os.fsdecode(name), format="JPEG")
    proc = subprocess.run([*FACEFLOW, "verify", os.fsdecode(name), os.fsdecode(name)], capture_output=True,
                          timeout=600, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = proc.stdout.decode("utf-8")  # strict: valid UTF-8
    assert text.startswith("same person") and text.count(f"{tmp_path}/caf\\xe9 \\xff.jpg [") == 2


def test_a_link_to_an_image_outside_the_folder(tmp_path: Path, small_face: PILImage.Image) -> None:
    """pipeline.result_paths raised ValueError before anything ran."""
    (tmp_path / "elsewhere").mkdir()
    small_face.save(tmp_path / "elsewhere" / "real.jpg")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link.jpg").symlink_to(tmp_path / "elsewhere" / "real.jpg")
    res = invoke("analyze", tmp_path / "in", "--out", tmp_path / "out", "--stages", "detect")
    assert res.exit_code == 0, res.output
    (rec,) = read_jsonl(tmp_path / "out" / "faces.jsonl")
    assert rec["path"] == str(tmp_path / "in" / "link.jpg") and len(rec["faces"]) == 1
    assert (tmp_path / "out" / "annotated" / "link.jpg").is_file()


def test_an_annotated_image_that_cannot_be_written(tmp_path: Path, small_face: PILImage.Image) -> None:
    """The write error is recorded on that image, the batch goes on, the exit code says so."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.jpg", "b.jpg"):
        small_face.save(src / name)
    (tmp_path / "out" / "annotated" / "a.jpg").mkdir(parents=True)  # in the way of a.jpg's copy
    res = invoke("analyze", src, "--out", tmp_path / "out", "--stages", "detect")
    assert res.exit_code == 1, res.output
    a, b = read_jsonl(tmp_path / "out" / "faces.jsonl")
    assert a["error"].startswith("annotated image not written") and len(a["faces"]) == 1
    assert b["error"] is None and (tmp_path / "out" / "annotated" / "b.jpg").is_file()
    assert "annotated image not written" in res.stderr and "1 failed" in res.stderr


def test_annotated_names_of_one_stem_do_not_collide(tmp_path: Path, small_face: PILImage.Image) -> None:
    """a.gif and a.webp (and x.png beside x.tif) became one PNG, the second overwriting the first."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.gif", "a.webp", "x.png", "x.tif"):
        small_face.save(src / name)
    res = invoke("analyze", src, "--out", tmp_path / "out", "--stages", "detect")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "out" / "annotated").iterdir() if not p.name.startswith("."))
    assert names == ["a.gif.png", "a.webp.png", "x.png", "x.tif.png"]


def test_rerun_into_the_same_out_inside_the_input(tmp_path: Path, small_face: PILImage.Image) -> None:
    """The second run must neither analyse the first run's annotated copies nor keep the copy of an
    image that is gone."""
    src = tmp_path / "in"
    src.mkdir()
    small_face.save(src / "a.jpg")
    small_face.save(src / "b.jpg")
    out = src / "results"
    assert invoke("analyze", src, "--out", out, "--stages", "detect").exit_code == 0
    (src / "b.jpg").unlink()
    res = invoke("analyze", src, "--out", out, "--stages", "detect")
    assert res.exit_code == 0, res.output
    assert [Path(r["path"]).name for r in read_jsonl(out / "faces.jsonl")] == ["a.jpg"]
    assert sorted(p.name for p in (out / "annotated").iterdir()) == [".faceflow-annotated", "a.jpg"]
    assert "removed 1 annotated image" in res.stderr


def test_out_naming_a_file_is_a_usage_error(tmp_path: Path, small_face: PILImage.Image) -> None:
    small_face.save(tmp_path / "a.jpg")
    (tmp_path / "taken").write_text("not a folder")
    res = invoke("analyze", tmp_path / "a.jpg", "--out", tmp_path / "taken")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)  # typer's exit, no traceback
    assert "exists and is not a folder" in res.stderr
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_input_inside_the_annotated_folder_is_a_usage_error(tmp_path: Path, small_face: PILImage.Image) -> None:
    """Annotating out/annotated/a.jpg into out/annotated/a.jpg would overwrite the input with its copy."""
    (tmp_path / "out" / "annotated").mkdir(parents=True)
    small_face.save(tmp_path / "out" / "annotated" / "a.jpg")
    res = invoke("analyze", tmp_path / "out" / "annotated", "--out", tmp_path / "out")
    assert res.exit_code == 2 and "choose another --out" in res.stderr


def test_missing_model_offline_stops_at_once_with_exit_3(tmp_path: Path, small_face: PILImage.Image) -> None:
    """An empty FACEFLOW_HOME offline: one message and exit 3, not one failure per image and exit 1."""
    for i in range(3):
        small_face.save(tmp_path / f"{i}.jpg")
    env = {**os.environ, "FACEFLOW_OFFLINE": "1", "FACEFLOW_HOME": str(tmp_path / "home")}
    env.pop("FACEFLOW_MODELS", None)
    proc = subprocess.run([*FACEFLOW, "analyze", tmp_path, "--out", tmp_path / "out"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "XNNPACK" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: model 'yunet'") and "offline" in lines[0]
    assert "Traceback" not in proc.stderr and "failed" not in proc.stderr


def test_heic_in_a_folder_gets_an_error_line(tmp_path: Path, small_face: PILImage.Image) -> None:
    small_face.save(tmp_path / "a.jpg")
    (tmp_path / "b.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    res = invoke("analyze", tmp_path, "--out", tmp_path / "out", "--stages", "detect")
    assert res.exit_code == 1
    recs = {Path(r["path"]).name: r for r in read_jsonl(tmp_path / "out" / "faces.jsonl")}
    assert set(recs) == {"a.jpg", "b.heic"} and "unsupported format HEIC" in recs["b.heic"]["error"]


def test_error_lines_are_not_wrapped_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    name = tmp_path / ("a-rather-long-file-name-" * 4 + ".jpg")
    name.write_bytes(b"this is not an image\n")
    proc = run("analyze", name, "--out", tmp_path / "out", "--stages", "detect")
    assert proc.returncode == 1
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("failed:")]
    assert len(line) > 120 and line.endswith("not a recognised image format")


def test_markup_in_a_file_name_is_printed_as_is(tmp_path: Path) -> None:
    """Rich read "[/x]" in a name as a closing tag and raised MarkupError out of the batch."""
    bad = tmp_path / "[" / "x] [red].jpg"  # the path reads ".../[/x] [red].jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"nope")
    res = invoke("analyze", bad, "--out", tmp_path / "out", "--stages", "detect")
    assert res.exit_code == 1, res.output
    assert "[/x] [red].jpg" in res.stderr


def test_out_equal_to_the_input_folder(tmp_path: Path, small_face: PILImage.Image) -> None:
    """With --out the input folder itself, a rerun must not analyse OUT/annotated's copies."""
    small_face.save(tmp_path / "a.jpg")
    for _ in range(2):
        res = invoke("analyze", tmp_path, "--out", tmp_path, "--stages", "detect")
        assert res.exit_code == 0, res.output
        assert [Path(r["path"]).name for r in read_jsonl(tmp_path / "faces.jsonl")] == ["a.jpg"]


def test_a_relative_name_with_a_leading_dash(tmp_path: Path, small_face: PILImage.Image,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``--`` a name like ``-x.jpg`` is a file, and its copy lands inside --out, not beside it."""
    monkeypatch.chdir(tmp_path)
    small_face.save(tmp_path / "-x.jpg")
    res = invoke("analyze", "--out", "o", "--stages", "detect", "--", "-x.jpg")
    assert res.exit_code == 0, res.output
    (rec,) = read_jsonl(tmp_path / "o" / "faces.jsonl")
    assert rec["path"] == "-x.jpg" and len(rec["faces"]) == 1
    assert (tmp_path / "o" / "annotated" / "-x.jpg").is_file()


def test_anonymize_into_the_input_folder_loses_no_photo(tmp_path: Path, small_face: PILImage.Image) -> None:
    """``anonymize photos --out photos`` listed every planned copy as written, though each was its own
    input and refused; a rerun on one photo then deleted all the others as stale copies."""
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    small_face.save(src / "a.jpg")
    small_face.save(src / "b.jpg")
    (src / "sub" / "c.jpg").write_text("not an image")
    assert invoke("anonymize", src, "--out", src).exit_code == 1
    res = invoke("anonymize", src / "a.jpg", "--out", src)
    assert res.exit_code == 1 and "is an input" in res.stderr
    assert (src / "b.jpg").is_file() and (src / "sub" / "c.jpg").read_text() == "not an image"


def test_anonymize_names_a_bad_photo_once(tmp_path: Path, small_face: PILImage.Image) -> None:
    """The error read "<path>: <path>: not a recognised image format" (the library's message names it)."""
    small_face.save(tmp_path / "a.jpg")
    bad = tmp_path / "text.jpg"
    bad.write_text("not an image")
    res = invoke("anonymize", tmp_path, "--out", tmp_path / "out")
    assert res.exit_code == 1
    recs = {Path(r["path"]).name: r for r in read_jsonl(tmp_path / "out" / "anonymize.jsonl")}
    assert recs["a.jpg"]["error"] is None
    assert recs["text.jpg"]["error"] == f"{bad}: not a recognised image format"
    assert f"failed: {bad}: not a recognised image format" in res.stderr
