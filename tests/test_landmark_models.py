"""The newer landmark models: PFLD-106 read from its torch checkpoint without torch, MediaPipe's
478-point landmarker out of its .task bundle, and their 68 points on a real face."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from faceflow.detect import create_detector
from faceflow.errors import CheckpointError, ConfigError
from faceflow.eval.w300 import nme
from faceflow.landmarks import (
    FUSED_WEIGHTS,
    LANDMARKER_POINTS,
    PFLD_POINTS,
    Landmarks68Stage,
    MeshOptions,
    MeshStage,
)
from faceflow.models import derive
from faceflow.models.pfld import ALLOWED, pfld_to_onnx
from faceflow.models.registry import LANDMARKER_FILE, LANDMARKER_TASK_FILE, PFLD_FILE, PFLD_SRC, get
from faceflow.models.runtime import default_runtime
from faceflow.models.store import ModelStore, default_store
from faceflow.models.torch_reader import LEGACY_MAGIC, LEGACY_PROTOCOL, load_legacy_module, state_dict


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _legacy_file(path: Path, body: bytes, info: object = None) -> Path:
    with open(path, "wb") as fh:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, info or {"little_endian": True}):
            pickle.dump(header, fh)
        fh.write(body)
    return path


def test_checkpoint_reader_refuses_any_other_global(tmp_path: Path) -> None:
    """A pickle that would call ``os.system`` is refused before anything runs."""
    marker = tmp_path / "ran"
    evil = _legacy_file(tmp_path / "evil.pkl", b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(CheckpointError, match=r"os\.system"):
        load_legacy_module(evil, ALLOWED)
    assert not marker.exists()
    # a torch class outside the allowed module paths is refused too
    other = _legacy_file(tmp_path / "other.pkl", b"ctorch.optim.sgd\nSGD\n)\x81.")
    with pytest.raises(CheckpointError, match=r"torch\.optim\.sgd\.SGD"):
        load_legacy_module(other, ALLOWED)


def test_checkpoint_reader_names_a_file_of_another_format(tmp_path: Path) -> None:
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(CheckpointError, match=r"new\.pth"):
        load_legacy_module(zipped, ALLOWED)
    not_a_module = _legacy_file(tmp_path / "list.pkl", pickle.dumps([1, 2], protocol=2) + pickle.dumps([], protocol=2))
    with pytest.raises(CheckpointError, match="not a module"):
        load_legacy_module(not_a_module, ALLOWED)


@pytest.fixture(scope="module")
def pfld_checkpoint() -> Path:
    return default_store().fetch_file(PFLD_SRC)


def test_pfld_checkpoint_reads_without_torch(pfld_checkpoint: Path) -> None:
    root = load_legacy_module(pfld_checkpoint, ALLOWED)
    weights = state_dict(root)
    assert root.type_name.endswith("mobilev3_pfld.PFLDInference")
    assert weights["fc.weight"].shape == (2 * PFLD_POINTS, 176) and weights["fc.weight"].dtype == np.float32
    assert weights["conv8.weight"].shape == (128, 32, 7, 7)
    assert all(np.isfinite(w).all() for w in weights.values())


def test_pfld_conversion_is_deterministic(pfld_checkpoint: Path, tmp_path: Path) -> None:
    """Two conversions give the same bytes, and those are the registry's (the store checks them too)."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    pfld_to_onnx(pfld_checkpoint, a)
    pfld_to_onnx(pfld_checkpoint, b)
    assert _sha(a) == _sha(b) == PFLD_FILE.sha256
    assert a.stat().st_size == PFLD_FILE.size


def test_landmarker_is_taken_out_of_its_task_bundle(tmp_path: Path) -> None:
    task = default_store().fetch_file(LANDMARKER_TASK_FILE)
    out = tmp_path / "landmarks.tflite"
    derive.task_face_landmarks_detector(task, out)
    assert _sha(out) == LANDMARKER_FILE.sha256


def test_new_models_load_and_read_a_face(astronaut: np.ndarray) -> None:
    rt = default_runtime()
    face = create_detector("yunet").detect(astronaut)[0]
    stage = Landmarks68Stage("fused")
    raw_pfld = stage._raw_points(astronaut, face, "pfld", mirror=False)
    raw_lm = stage._raw_points(astronaut, face, "landmarker", mirror=False)
    assert raw_pfld.shape == (PFLD_POINTS, 2) and raw_lm.shape == (LANDMARKER_POINTS, 3)
    x1, _, x2, _ = face.box
    for pts in (raw_pfld, raw_lm):  # the points cover the face, not a corner of the crop
        assert x1 - 0.1 * face.width < pts[:, 0].min() < pts[:, 0].max() < x2 + 0.1 * face.width
        assert pts[:, 1].max() - pts[:, 1].min() > 0.7 * face.height
    assert "onnx:pfld106:()" in rt.loaded and "tflite:face_landmarker" in rt.loaded


@pytest.mark.parametrize("source", ["landmarker", "pfld", "faceapi", "fused", "refined"])
def test_68_points_are_near_dlibs(source: str, astronaut: np.ndarray) -> None:
    """On a real face each permissive source lands within 3 % of the eye distance of dlib's points
    (their teacher); the packaged 468-point mesh regression is the yardstick it must not fall behind by
    more than a little."""
    face = create_detector("yunet").detect(astronaut)[0]
    dlib = Landmarks68Stage("dlib").predict(astronaut, face)
    pts = Landmarks68Stage(source).predict(astronaut, face)
    mesh = Landmarks68Stage("mesh").predict(astronaut, face)
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    assert nme(pts, dlib) < 0.03
    assert nme(pts, dlib) < nme(mesh, dlib) + 0.01


def test_mesh_stage_can_use_the_newer_landmarker(astronaut: np.ndarray) -> None:
    """``--mesh-model face_landmarker`` fills the same 468-vertex mesh (same order) from the newer model:
    it lands near the older model's mesh on a real face, and an unknown model is refused."""
    face = create_detector("yunet").detect(astronaut)[0]
    old, _ = MeshStage().predict(astronaut, face)
    new, presence = MeshStage(MeshOptions(model="face_landmarker")).predict(astronaut, face)
    assert new.shape == (468, 3) and presence > 0.9
    eyes = float(np.linalg.norm(old[33, :2] - old[263, :2]))
    assert np.linalg.norm(new[:, :2] - old[:, :2], axis=1).mean() < 0.05 * eyes
    with pytest.raises(ConfigError, match="unknown mesh model"):
        MeshStage(MeshOptions(model="face_mesh_v3"))


def test_store_builds_both_files_at_pull_time(pfld_checkpoint: Path, tmp_path: Path) -> None:
    """From their published sources alone (offline), the store derives the ONNX graph and the .tflite
    and checks each against its registered sha256."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for src in (pfld_checkpoint, default_store().fetch_file(LANDMARKER_TASK_FILE)):
        (sources / src.name).symlink_to(src)
    store = ModelStore(cache_dir=tmp_path / "cache", local_dirs=[sources], offline=True)
    for name, file in (("pfld106", PFLD_FILE), ("face_landmarker", LANDMARKER_FILE)):
        built = store.path(get(name))
        assert built.parent == tmp_path / "cache" and _sha(built) == file.sha256


def test_fused_is_the_weighted_mean_of_its_members(astronaut: np.ndarray) -> None:
    """The ``fused`` source (the default's starting points) is :data:`FUSED_WEIGHTS`' mean of its
    distilled sources."""
    assert sum(FUSED_WEIGHTS.values()) == pytest.approx(1)
    face = create_detector("yunet").detect(astronaut)[0]
    members = {s: Landmarks68Stage(s).predict(astronaut, face).astype(np.float64) for s in FUSED_WEIGHTS}
    fused = Landmarks68Stage("fused").predict(astronaut, face)
    np.testing.assert_allclose(fused, sum(w * members[s] for s, w in FUSED_WEIGHTS.items()), atol=1e-3)
