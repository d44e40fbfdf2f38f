"""The eval cache's key: it names the predictor version, the runtime libraries' versions and the
model-facing source, changes when any of them does, and stays the same otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import faceflow
from faceflow.eval import cache as cache_mod
from faceflow.eval.cache import EDGE_ONLY, predictor_key, runtime_versions, source_digest
from faceflow.eval.tasks import cache_for

PACKAGE = Path(faceflow.__file__).resolve().parent
RUNTIME = {"opencv": "opencv-python-headless==4.12.0.88", "onnxruntime": "onnxruntime==1.22.0",
           "dlib": "dlib-bin==20.0.1", "litert": "ai-edge-litert==2.0.0", "numpy": "numpy==2.2.6"}


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the installed faceflow package's files (byte-code left out)."""
    dst = tmp_path / "faceflow"
    shutil.copytree(PACKAGE, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _touch(path: Path, text: str = "\n# edited\n") -> None:
    with path.open("a") as f:
        f.write(text)


def test_source_digest_is_stable_and_equals_the_installed_package(package: Path) -> None:
    assert source_digest(package) == source_digest(package) == source_digest()


@pytest.mark.parametrize("module", ["eval/tasks.py", "detect/yunet.py", "recognize.py", "pipeline.py",
                                    "gallery/workflows.py", "models/registry.py", "eval/wider.py"])
def test_a_model_facing_edit_changes_the_digest(package: Path, module: str) -> None:
    before = source_digest(package)
    _touch(package / module)
    assert source_digest(package) != before


def test_new_modules_and_shipped_data_are_hashed(package: Path) -> None:
    before = source_digest(package)
    (package / "detect" / "new_detector.py").write_text("THRESHOLD = 0.5\n")
    after_module = source_digest(package)
    assert after_module != before
    data = package / "data" / "mesh_to_68.npz"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    assert source_digest(package) != after_module


def test_edge_only_modules_and_bytecode_are_not_hashed(package: Path) -> None:
    before = source_digest(package)
    for module in sorted(EDGE_ONLY):
        _touch(package / module)
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "recognize.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert source_digest(package) == before
    real = Path(faceflow.__file__).parent
    assert all((real / m).is_file() for m in EDGE_ONLY)  # no stale name hides a real module


def test_runtime_versions_name_the_libraries_in_use() -> None:
    import cv2
    import dlib
    import onnxruntime

    v = runtime_versions()
    assert set(v) == {"opencv", "onnxruntime", "dlib", "litert", "numpy"}
    assert cv2.__version__ in v["opencv"]
    assert onnxruntime.__version__ in v["onnxruntime"]
    assert dlib.__version__ in v["dlib"]
    assert np.__version__ in v["numpy"]
    assert v["litert"].startswith("ai-edge-litert==")


def test_the_key_changes_with_each_part_and_only_then(monkeypatch: pytest.MonkeyPatch) -> None:
    def key(**kw: object) -> str:
        args: dict[str, object] = {"protocol": "wider", "models": {"yunet/face_detection_yunet.onnx": "a" * 64},
                                   "settings": "score>=0.05", "runtime": RUNTIME, "source": "0123456789abcdef"}
        args.update(kw)
        return predictor_key(**args)  # type: ignore[arg-type]

    base = key()
    assert key() == base
    assert f"predictor={cache_mod.PREDICTOR_VERSION}" in base and "numpy=numpy==2.2.6" in base
    variants = [
        key(protocol="300w"), key(models={"yunet/face_detection_yunet.onnx": "b" * 64}), key(settings="score>=0.1"),
        key(source="fedcba9876543210"),
        *(key(runtime={**RUNTIME, lib: RUNTIME[lib] + ".post1"}) for lib in RUNTIME),
    ]
    assert len({base, *variants}) == len(variants) + 1
    monkeypatch.setattr(cache_mod, "PREDICTOR_VERSION", cache_mod.PREDICTOR_VERSION + 1)
    assert key() != base


def test_a_bumped_predictor_version_never_reads_old_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFLOW_HOME", str(tmp_path / "home"))
    image = tmp_path / "a.jpg"
    image.write_bytes(b"not really a jpeg")
    old = cache_for("wider", ["yunet"], "score>=0.05")
    assert old is not None
    assert source_digest() in old.key and runtime_versions()["onnxruntime"] in old.key
    old.put(image, np.array([[1.0, 2.0, 3.0, 4.0, 0.9]]), 0.01)
    again = cache_for("wider", ["yunet"], "score>=0.05")
    assert again is not None and again.get(image)[0]
    monkeypatch.setattr(cache_mod, "PREDICTOR_VERSION", cache_mod.PREDICTOR_VERSION + 1)
    bumped = cache_for("wider", ["yunet"], "score>=0.05")
    assert bumped is not None and bumped.dir != old.dir
    assert bumped.get(image) == (False, None, 0.0)
