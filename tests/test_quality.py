"""Quality: the component measures move the right way on controlled degradations of a real face, the
utility model's numpy trees, the error-versus-reject metric, the stage, the CLI and enrolment."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from faceflow.eval.quality import error_versus_reject, fmr_threshold, utility_labels
from faceflow.pipeline import Analyzer
from faceflow.quality.measures import COMPONENTS, blockiness, ramp, trapezoid
from faceflow.quality.model import TreeEnsembles
from faceflow.quality.profile import check_profile, profile_passed
from faceflow.types import Face, Quality


@pytest.fixture(scope="module")
def analyzer():  # type: ignore[no-untyped-def]
    with Analyzer(stages=("detect", "quality")) as a:
        yield a


def _face(analyzer: Analyzer, image: np.ndarray) -> Face:
    faces = analyzer.analyze_array(np.ascontiguousarray(image))
    assert faces, "no face found"
    h, w = image.shape[:2]
    return min(faces, key=lambda f: (f.center[0] - w / 2) ** 2 + (f.center[1] - h / 2) ** 2)


def _value(face: Face, name: str) -> float:
    assert face.quality is not None
    v = face.quality.components[name].value
    assert v is not None, f"{name} not assessed"
    return v


def _score(face: Face, name: str) -> float:
    assert face.quality is not None
    return face.quality.components[name].score


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    PILImage.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(PILImage.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def reference(analyzer: Analyzer, astronaut: np.ndarray) -> Face:
    return _face(analyzer, astronaut)


def test_reference_face_is_fully_assessed(reference: Face) -> None:
    q = reference.quality
    assert q is not None and q.unified is not None and 0 <= q.unified <= 100
    assert list(q.components) == list(COMPONENTS)
    for name, m in q.components.items():
        assert m.value is not None and 0 <= m.score <= 100, name
    d = reference.to_dict()["quality"]
    assert set(d) == {"unified", "components"} and d["components"]["sharpness"]["score"] == round(
        q.components["sharpness"].score, 1)


def test_blur_lowers_sharpness(analyzer: Analyzer, astronaut: np.ndarray, reference: Face) -> None:
    blurred = _face(analyzer, cv2.GaussianBlur(astronaut, (0, 0), 3))
    assert _value(blurred, "sharpness") < 0.3 * _value(reference, "sharpness")
    assert _score(blurred, "sharpness") < _score(reference, "sharpness")


def test_darken_lowers_luminance_and_raises_under_exposure(analyzer: Analyzer, astronaut: np.ndarray,
                                                           reference: Face) -> None:
    dark = _face(analyzer, (astronaut.astype(np.float32) * 0.2).astype(np.uint8))
    assert _value(dark, "luminance_mean") < 0.5 * _value(reference, "luminance_mean")
    assert _score(dark, "luminance_mean") < _score(reference, "luminance_mean")
    assert _value(dark, "under_exposure_prevention") > _value(reference, "under_exposure_prevention") + 0.1
    assert _score(dark, "under_exposure_prevention") < _score(reference, "under_exposure_prevention")
    assert _value(dark, "dynamic_range") < _value(reference, "dynamic_range")


def test_brighten_raises_luminance_and_over_exposure(analyzer: Analyzer, astronaut: np.ndarray,
                                                     reference: Face) -> None:
    bright = _face(analyzer, np.clip(astronaut.astype(np.float32) * 1.8 + 60, 0, 255).astype(np.uint8))
    assert _value(bright, "luminance_mean") > _value(reference, "luminance_mean") + 0.2
    assert _score(bright, "luminance_mean") < _score(reference, "luminance_mean")
    assert _value(bright, "over_exposure_prevention") > _value(reference, "over_exposure_prevention") + 0.1
    assert _score(bright, "over_exposure_prevention") < _score(reference, "over_exposure_prevention")


def test_jpeg_quality_10_shows_compression_artefacts(analyzer: Analyzer, astronaut: np.ndarray) -> None:
    fine = _face(analyzer, _jpeg(astronaut, 95))
    coarse = _face(analyzer, _jpeg(astronaut, 10))
    assert _value(coarse, "compression_artifacts") > _value(fine, "compression_artifacts") + 0.2
    assert _score(coarse, "compression_artifacts") < _score(fine, "compression_artifacts")


def test_rotation_by_30_degrees_shows_in_roll(analyzer: Analyzer, astronaut: np.ndarray, reference: Face) -> None:
    h, w = astronaut.shape[:2]
    cx, cy = reference.center
    m = cv2.getRotationMatrix2D((cx, cy), 30, 1.0)  # counter-clockwise: roll changes by -30
    turned = _face(analyzer, cv2.warpAffine(astronaut, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    assert _value(turned, "head_pose_roll") == pytest.approx(_value(reference, "head_pose_roll") - 30, abs=4)
    assert _score(turned, "head_pose_roll") < _score(reference, "head_pose_roll") - 15


def test_cropping_half_the_face_shows_in_margins_and_occlusion(analyzer: Analyzer, astronaut: np.ndarray,
                                                                reference: Face) -> None:
    x_mid = round(reference.center[0])
    half = _face(analyzer, astronaut[:, :x_mid])  # the face's right-hand half (image right) cut off
    assert _value(half, "rightward_crop") < 0 < _value(reference, "rightward_crop")
    assert _score(half, "rightward_crop") < _score(reference, "rightward_crop")
    assert _value(half, "face_occlusion_prevention") < 0.8 <= _value(reference, "face_occlusion_prevention")
    assert _score(half, "face_occlusion_prevention") < _score(reference, "face_occlusion_prevention")
    assert _value(half, "eyes_visible") < _value(reference, "eyes_visible")


def test_blockiness_is_one_without_a_grid_and_larger_with_one() -> None:
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), (0, 0), 2)
    plain = blockiness(smooth, (0, 0, 128, 128))
    assert plain is not None and plain == pytest.approx(1.0, abs=0.1)
    blocky = np.kron(rng.integers(0, 255, (16, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    blocky = np.clip(blocky.astype(int) // 4 + smooth.astype(int) // 2, 0, 255).astype(np.uint8)
    value = blockiness(blocky, (0, 0, 128, 128))
    assert value is not None and value > 2.0
    assert blockiness(smooth, (0, 0, 10, 10)) is None


def test_mappings() -> None:
    assert ramp(5, 0, 10) == 50 and ramp(-1, 0, 10) == 0 and ramp(11, 0, 10) == 100
    assert ramp(0.1, 0.5, 0.0) == pytest.approx(80)  # falling
    assert trapezoid(0.5, 0, 0.3, 0.6, 1) == 100 and trapezoid(0.8, 0, 0.3, 0.6, 1) == pytest.approx(50)


def test_tree_ensembles_follow_their_nodes_and_round_trip() -> None:
    # depth 2: root splits feature 0 at 0.5; left child splits feature 1 at 2; right child sends all left.
    feature = np.array([[[0, 1, 0]]], np.int16)
    threshold = np.array([[[0.5, 2.0, np.inf]]], np.float64)
    leaf = np.array([[[1.0, 2.0, 3.0, 4.0]]], np.float32)
    ens = TreeEnsembles(feature, threshold, leaf, np.array([10.0]), np.linspace(0, 100, 101)[None] / 10 + 10)
    x = np.array([[0.0, 1.0], [0.0, 3.0], [1.0, 0.0], [1.0, 9.0]])
    assert ens.predict(x, 0).tolist() == [11.0, 12.0, 13.0, 13.0]
    assert ens.score(x, 0).tolist() == pytest.approx([10.0, 20.0, 30.0, 30.0])
    again = TreeEnsembles.from_bytes(ens.to_bytes())
    assert again.to_bytes() == ens.to_bytes() and again.predict(x, 0).tolist() == ens.predict(x, 0).tolist()


def test_utility_labels_leave_the_image_out() -> None:
    e = np.array([[1, 0], [1, 0.2], [0, 1], [0.1, 1], [0.7, 0.7]], float)
    names = ["a", "a", "b", "b", "c"]
    u = utility_labels(e, names)
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    own0 = unit[1]
    cb = unit[2:4].mean(0)
    cb /= np.linalg.norm(cb)
    cc = unit[4]
    assert u[0] == pytest.approx(unit[0] @ own0 - max(unit[0] @ cb, unit[0] @ cc))
    assert np.isnan(u[4])  # "c" has one image: no own centre


def test_error_versus_reject_fixed_and_rederived() -> None:
    # 1000 impostors with scores 0..0.999 -> FMR 1e-3 allows one: threshold just above 0.998.
    neg = np.arange(1000) / 1000
    pos = np.array([0.5, 0.9, 1.5, 1.6])  # two genuine pairs fail the threshold
    s = np.r_[neg, pos]
    y = np.r_[np.zeros(1000, bool), np.ones(4, bool)]
    assert fmr_threshold(s, y, 1e-3) == pytest.approx(0.998, abs=1e-9)
    q = np.r_[np.full(1000, 10.0), [0.0, 1.0, 5.0, 5.0]]  # the failing genuine pairs have the lowest quality
    fr = np.array([0.0, 0.001, 0.002, 0.003])
    r = error_versus_reject(s, y, q, fractions=fr, area_limit=0.003)
    assert r["fnmr_fixed"] == [0.5, pytest.approx(1 / 3), 0.0, 0.0]
    assert r["area_fixed"] == pytest.approx(np.trapezoid([0.5, 1 / 3, 0, 0], fr))


def test_icao_profile_names_each_requirement(reference: Face) -> None:
    assert reference.quality is not None
    checks = check_profile(reference.quality)
    names = {c.requirement.name for c in checks}
    assert {"resolution", "frontal (yaw)", "eyes open", "single face", "in focus"} <= names
    by = {c.requirement.name: c for c in checks}
    assert by["single face"].passed is True and by["face not cut"].passed is True
    blurred = Quality(reference.quality.unified, dict(reference.quality.components))
    blurred.components["sharpness"] = type(blurred.components["sharpness"])(10.0, 0.0)
    assert next(c for c in check_profile(blurred) if c.requirement.name == "in focus").passed is False
    assert not profile_passed(check_profile(blurred))


def test_quality_cli_reports_failing_components_and_writes_overlays(tmp_path: Path, astronaut: np.ndarray) -> None:
    from typer.testing import CliRunner

    from faceflow.cli import app

    good, blurred = tmp_path / "in" / "good.png", tmp_path / "in" / "blurred.png"
    good.parent.mkdir()
    PILImage.fromarray(astronaut).save(good)
    PILImage.fromarray(cv2.GaussianBlur(astronaut, (0, 0), 4)).save(blurred)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["quality", str(good), str(blurred), "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "quality" in ln and "face 1" in ln]
    assert len(lines) == 2
    blurred_line = next(ln for ln in lines if "blurred" in ln)
    assert "sharpness" in blurred_line
    records = [json.loads(ln) for ln in (out / "quality.jsonl").read_text().splitlines()]
    assert [Path(rec["path"]).name for rec in records] == ["good.png", "blurred.png"]
    assert (out / "annotated" / "good.png").is_file() and (out / "annotated" / "blurred.png").is_file()
    r = CliRunner().invoke(app, ["quality", str(good), "--profile", "icao"])
    assert r.exit_code == 0, r.output
    assert "icao" in r.output and "resolution" in r.output and ("PASS" in r.output or "FAIL" in r.output)
    r = CliRunner().invoke(app, ["quality", str(good), "--profile", "nope"])
    assert r.exit_code == 2 and "unknown quality profile" in r.output
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    r = CliRunner().invoke(app, ["quality", str(broken), str(good)])
    assert r.exit_code == 1, r.output  # the bad file is reported and the batch goes on
    assert "broken.jpg" in r.output and "good.png face 1" in r.output


def test_enrolment_refuses_low_quality_with_the_reason(tmp_path: Path, astronaut: np.ndarray) -> None:
    from faceflow.gallery.sqlite import SQLiteStore
    from faceflow.gallery.workflows import analyzer_for, create_gallery, enroll

    good, blurred = tmp_path / "good.png", tmp_path / "blurred.png"
    PILImage.fromarray(astronaut).save(good)
    PILImage.fromarray(cv2.GaussianBlur(astronaut, (0, 0), 6)).save(blurred)
    store = SQLiteStore(tmp_path / "g.db")
    g = create_gallery(store, "people")
    with analyzer_for(g, quality=True) as analyzer:
        faces = {p.name: analyzer.analyze(p)[0] for p in (good, blurred)}
        qs = {k: f.quality.unified for k, f in faces.items()}  # type: ignore[union-attr]
        assert qs["blurred.png"] < qs["good.png"]
        minimum = (qs["blurred.png"] + qs["good.png"]) / 2
        report = enroll(store, "people", [("eileen", good), ("eileen", blurred)], analyzer, min_quality=minimum)
    assert report.enrolled == 1
    assert len(report.failed) == 1 and report.failed[0].path == str(blurred)
    assert "below the minimum" in report.failed[0].reason and "sharpness" in report.failed[0].reason
    stored = store.faces("people")
    assert len(stored) == 1 and stored[0].quality == pytest.approx(qs["good.png"] / 100, abs=1e-3)


def test_packaged_model_has_a_fold_ensemble_per_lfw_fold_and_one_for_use() -> None:
    from faceflow.models.registry import get
    from faceflow.quality import packaged_utility_model
    from faceflow.quality.model import ALL_FOLDS, feature_names

    spec = get("quality_utility")
    assert spec.files[0].size < 1 << 20
    model = packaged_utility_model()
    assert model.feature.shape[0] == ALL_FOLDS + 1 == 11
    assert model.n_features <= len(feature_names())
    assert np.all(np.diff(model.quantiles, axis=1) >= 0)


@pytest.mark.slow
def test_lfw_error_versus_reject(dataset) -> None:  # type: ignore[no-untyped-def]
    """The whole evaluation on LFW (minutes on first run; cached afterwards): every image scored by the
    ensemble trained without its fold; the unified score ranks errors better than random order."""
    from faceflow.eval.quality import eval_quality

    r = eval_quality(dataset("lfw"), progress=False)
    assert r["images_scored"] == r["images"] == 7701
    curves = r["curves"]
    assert set(curves) == {"unified", "detector_score", "inter_eye_distance", "sharpness", "random"}
    assert curves["unified"]["area_fixed"] < curves["random"]["area_fixed"]
    assert curves["unified"]["fnmr_fixed"][0] == curves["random"]["fnmr_fixed"][0]  # nothing rejected yet
    assert r["reject_5pct_images"]["unified"]["fnmr_after"] < r["reject_5pct_images"]["unified"]["fnmr_before"]


def test_analyze_writes_quality_into_faces_jsonl(tmp_path: Path, astronaut: np.ndarray) -> None:
    from typer.testing import CliRunner

    from faceflow.cli import app

    photo = tmp_path / "a.png"
    PILImage.fromarray(astronaut).save(photo)
    r = CliRunner().invoke(app, ["analyze", str(photo), "--stages", "quality", "--no-annotate",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    face = json.loads((tmp_path / "out" / "faces.jsonl").read_text())["faces"][0]
    assert 0 <= face["quality"]["unified"] <= 100
    assert list(face["quality"]["components"]) == list(COMPONENTS)
    assert "mesh" in face  # the quality stage pulled in the mesh it needs


def test_eye_aspect_ratio_by_hand_one_measure_for_quality_and_liveness() -> None:
    """Eye corners 10 px apart, lids 4 px apart (left) and 1 px (right): 0.4 and 0.1; the liveness
    blink cue reads the same measure (their mean)."""
    from faceflow.liveness.video import eye_aspect_ratio
    from faceflow.quality.measures import LEFT_EAR, RIGHT_EAR, eye_aspect_ratios

    mesh = np.zeros((468, 3))
    for idx, x0, gap in ((LEFT_EAR, 0.0, 4.0), (RIGHT_EAR, 30.0, 1.0)):
        outer, up1, up2, inner, low1, low2 = idx
        mesh[outer, :2], mesh[inner, :2] = (x0, 0.0), (x0 + 10.0, 0.0)
        mesh[up1, :2], mesh[low2, :2] = (x0 + 3.0, -gap / 2), (x0 + 3.0, gap / 2)
        mesh[up2, :2], mesh[low1, :2] = (x0 + 7.0, -gap / 2), (x0 + 7.0, gap / 2)
    assert eye_aspect_ratios(mesh) == pytest.approx((0.4, 0.1))
    assert eye_aspect_ratio(mesh) == pytest.approx(0.25)
