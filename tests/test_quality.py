"""Quality: the component measures move the right way on controlled degradations of a real face, the
QualityFace network read without torch (and its score on degraded faces), the utility model's numpy
trees, the error-versus-reject metric, the stage, the CLI and enrolment."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from faceflow.eval.quality import error_versus_reject, fmr_threshold, utility_labels
from faceflow.pipeline import Analyzer
from faceflow.quality.measures import COMPONENTS, blockiness, ramp, trapezoid
from faceflow.quality.model import TreeEnsembles, UtilityModel
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


def test_utility_model_blends_tree_and_norm_percentiles_and_round_trips() -> None:
    """Score = w x the trees' percentile + (1 - w) x the norm's percentile among the training norms."""
    trees = TreeEnsembles(np.zeros((1, 1, 1), np.int16), np.full((1, 1, 1), np.inf), np.zeros((1, 1, 2), np.float32),
                          np.array([0.5]), np.linspace(0, 1, 101)[None])  # every prediction 0.5: percentile 50
    model = UtilityModel(trees, np.linspace(10, 30, 101)[None], 0.25)
    s = model.score(np.zeros((3, 1)), [10.0, 20.0, 40.0], 0)
    assert s.tolist() == pytest.approx([0.25 * 50, 0.25 * 50 + 0.75 * 50, 0.25 * 50 + 0.75 * 100])
    again = UtilityModel.from_bytes(model.to_bytes())
    assert again.to_bytes() == model.to_bytes() and again.tree_weight == 0.25
    assert not model.reads("sharpness")  # feature 0 appears only on a node that does not split
    split = TreeEnsembles(np.zeros((1, 1, 1), np.int16), np.zeros((1, 1, 1)), trees.leaf, trees.base, trees.quantiles)
    assert UtilityModel(split, model.norm_quantiles, 0.25).reads("sharpness")


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


@pytest.mark.parametrize("below", ["nan", "-5", "101"])
def test_quality_cli_refuses_a_fail_below_outside_0_100(tmp_path: Path, astronaut: np.ndarray, below: str) -> None:
    """A usage error (exit 2) before any image is read; before, --fail-below nan listed no component as
    failing, whatever the face (``components under nan: none``, exit 0)."""
    from typer.testing import CliRunner

    from faceflow.cli import app

    photo = tmp_path / "a.png"
    PILImage.fromarray(astronaut).save(photo)
    r = CliRunner().invoke(app, ["quality", str(photo), "--fail-below", below])
    assert r.exit_code == 2, r.output
    assert "--fail-below" in " ".join(r.output.split()) and "face 1" not in r.output


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
    assert model.trees.feature.shape[0] == model.norm_quantiles.shape[0] == ALL_FOLDS + 1 == 11
    assert model.trees.n_features <= len(feature_names())
    assert np.all(np.diff(model.trees.quantiles, axis=1) >= 0)
    assert np.all(np.diff(model.norm_quantiles, axis=1) >= 0)
    assert 0 < model.tree_weight < 1


@pytest.mark.slow
def test_lfw_error_versus_reject(dataset) -> None:  # type: ignore[no-untyped-def]
    """The whole evaluation on LFW (minutes on first run; cached afterwards): every image scored by the
    ensemble trained without its fold; the unified score ranks errors better than random order."""
    from faceflow.eval.quality import eval_quality

    r = eval_quality(dataset("lfw"), progress=False)
    assert r["images_scored"] == r["images"] == 7701
    curves = r["curves"]
    assert set(curves) == {"unified", "detector_score", "inter_eye_distance", "sharpness", "qualityface",
                           "embedding_norm", "random"}
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


# -- the QualityFace network -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qualityface_checkpoint() -> Path:
    from faceflow.models.registry import QUALITYFACE_SRC
    from faceflow.models.store import default_store

    return default_store().fetch_file(QUALITYFACE_SRC)


def _reference_forward(w: dict[str, np.ndarray], x: np.ndarray) -> float:
    """QualityNet on one [3, H, W] input in plain numpy, written apart from the ONNX builder: batch
    norms applied as such (not folded), convolutions as sums of shifted slices."""
    from faceflow.models.qualityface import PREFIX, SETTINGS

    def conv(a: np.ndarray, k: np.ndarray, stride: int, groups: int) -> np.ndarray:
        _, h, wd = a.shape
        kh = k.shape[2]
        p = (kh - 1) // 2
        a = np.pad(a, ((0, 0), (p, p), (p, p)))
        ho, wo = (h + 2 * p - kh) // stride + 1, (wd + 2 * p - kh) // stride + 1
        out = np.zeros((k.shape[0], ho, wo))
        for i in range(kh):
            for j in range(kh):
                patch = a[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
                if groups == 1:
                    out += np.einsum("oc,chw->ohw", k[:, :, i, j], patch)
                else:  # depthwise
                    out += k[:, 0, i, j][:, None, None] * patch
        return out

    def bn(a: np.ndarray, name: str) -> np.ndarray:
        g, b, m, v = (w[f"{name}.{s}"].astype(np.float64) for s in ("weight", "bias", "running_mean", "running_var"))
        return (a - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5) * g[:, None, None] + b[:, None, None]

    def relu6(a: np.ndarray) -> np.ndarray:
        return np.clip(a, 0, 6)

    def k(name: str) -> np.ndarray:
        return w[name].astype(np.float64)

    a = relu6(bn(conv(x.astype(np.float64), k(PREFIX + "0.0.weight"), 2, 1), PREFIX + "0.1"))
    index = 1
    for t, _, n, s in SETTINGS:
        for i in range(n):
            p, stride = f"{PREFIX}{index}.conv.", s if i == 0 else 1
            y, layer = a, 0
            if t != 1:
                y = relu6(bn(conv(y, k(p + "0.0.weight"), 1, 1), p + "0.1"))
                layer = 1
            y = relu6(bn(conv(y, k(f"{p}{layer}.0.weight"), stride, y.shape[0]), f"{p}{layer}.1"))
            y = bn(conv(y, k(f"{p}{layer + 1}.weight"), 1, 1), f"{p}{layer + 2}")
            a = a + y if stride == 1 and a.shape[0] == y.shape[0] else y
            index += 1
    a = relu6(bn(conv(a, k(f"{PREFIX}{index}.0.weight"), 1, 1), f"{PREFIX}{index}.1"))
    return float(k("module.classify.weight")[0] @ a.mean(axis=(1, 2)) + w["module.classify.bias"][0])


def test_qualityface_reads_without_torch_and_converts_to_the_registered_graph(
        qualityface_checkpoint: Path, tmp_path: Path, astronaut: np.ndarray, reference: Face) -> None:
    """The state_dict is read without torch; two conversions give the registry's bytes; the graph's
    output on a real face equals a plain numpy forward pass of the architecture (batch norms unfolded)."""
    import hashlib

    import onnxruntime as ort

    from faceflow.models.qualityface import qualityface_to_onnx
    from faceflow.models.registry import QUALITYFACE_FILE
    from faceflow.models.torch_reader import load_legacy_state_dict
    from faceflow.quality.network import network_crop

    weights = load_legacy_state_dict(qualityface_checkpoint)
    assert weights["module.classify.weight"].shape == (1, 1280)
    assert weights["module.backbone.net.features.0.0.weight"].shape == (32, 3, 3, 3)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    qualityface_to_onnx(qualityface_checkpoint, a)
    qualityface_to_onnx(qualityface_checkpoint, b)
    sha = hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha == hashlib.sha256(b.read_bytes()).hexdigest() == QUALITYFACE_FILE.sha256
    crop = network_crop(astronaut, reference).astype(np.float32) / 127.5 - 1.0
    x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None])
    out = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape == (1, 1)
    assert float(out[0, 0]) == pytest.approx(_reference_forward(weights, x[0]), abs=1e-3)


def test_state_dict_reader_refuses_module_classes(tmp_path: Path) -> None:
    """A state_dict holds tensors only: even torch's own module classes are refused there."""
    from faceflow.errors import CheckpointError
    from faceflow.models.torch_reader import LEGACY_MAGIC, LEGACY_PROTOCOL, load_legacy_state_dict

    path = tmp_path / "module.pth"
    with open(path, "wb") as fh:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, fh)
        fh.write(b"ctorch.nn.modules.conv\nConv2d\n)\x81.")
    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.conv\.Conv2d"):
        load_legacy_state_dict(path)
    with open(path, "wb") as fh:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}, [1, 2], []):
            pickle.dump(header, fh, protocol=2)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_legacy_state_dict(path)


def test_network_score_falls_as_a_real_face_degrades(analyzer: Analyzer, astronaut: np.ndarray,
                                                     reference: Face) -> None:
    """QualityFace scores the astronaut's face lower once it is blurred, shrunk to a few pixels, or
    darkened, each on the face the detector finds in the degraded image."""
    from faceflow.quality.network import network_quality

    rt = analyzer.runtime
    base = float(network_quality(astronaut, [reference], rt)[0])
    h, w = astronaut.shape[:2]
    small = cv2.resize(cv2.resize(astronaut, (w // 8, h // 8), interpolation=cv2.INTER_AREA), (w, h))
    degraded = {  # image, the least drop asserted (the reference face scores about 0.9)
        "blur": (cv2.GaussianBlur(astronaut, (0, 0), 4), 0.5),
        "low resolution": (small, 0.5),
        "dark": ((astronaut.astype(np.float32) * 0.15).astype(np.uint8), 0.1),
    }
    for name, (image, drop) in degraded.items():
        face = _face(analyzer, image)
        score = float(network_quality(image, [face], rt)[0])
        assert score < base - drop, (name, score, base)


def test_embedding_norm_falls_when_a_real_face_is_blurred(analyzer: Analyzer, astronaut: np.ndarray,
                                                           reference: Face) -> None:
    """The unified score's other input: SFace's embedding is shorter for a blurred face, while the unit
    embedding the recogniser returns is unchanged by taking the norm apart."""
    from faceflow.quality import embedding_norms
    from faceflow.recognize import SFaceEmbedder

    rt = analyzer.runtime
    blurred_image = cv2.GaussianBlur(astronaut, (0, 0), 4)
    blurred = _face(analyzer, blurred_image)
    sharp_norm = float(embedding_norms(astronaut, [reference], rt)[0])
    assert float(embedding_norms(blurred_image, [blurred], rt)[0]) < 0.9 * sharp_norm
    embedder = SFaceEmbedder(runtime=rt)
    unit, norms = embedder.embed_crops_with_norms(embedder.crops(astronaut, [reference]))
    assert np.allclose(unit, embedder.embed(astronaut, [reference])) and norms[0] == pytest.approx(sharp_norm, rel=1e-5)
