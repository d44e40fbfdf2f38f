"""The trained-model file format (:mod:`faceflow.models.npz`): deterministic bytes, and every model file
shipped in ``faceflow/data`` is exactly what its class writes back (one writer for all of them)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from faceflow.landmarks import MeshTo68
from faceflow.liveness.texture import LinearModel
from faceflow.models.npz import npz_bytes
from faceflow.quality.model import UtilityModel

DATA = Path(__file__).resolve().parents[1] / "src" / "faceflow" / "data"


def test_npz_bytes_are_deterministic_and_load_back() -> None:
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([7], np.int16)}
    data = npz_bytes(arrays)
    assert data == npz_bytes(dict(arrays))  # no timestamp or other varying byte
    with np.load(io.BytesIO(data)) as z:
        assert z.files == ["b", "a"]
        assert z["b"].dtype == np.float32 and z["b"].tolist() == arrays["b"].tolist()
        assert z["a"].dtype == np.int16 and z["a"].tolist() == [7]


@pytest.mark.parametrize(("name", "cls"), [
    ("mesh_to_68", MeshTo68), ("landmarker_to_68", MeshTo68), ("pfld_to_68", MeshTo68),
    ("quality_utility", UtilityModel), ("liveness_texture", LinearModel),
])
def test_shipped_model_files_are_rewritten_byte_for_byte(name: str, cls: type) -> None:
    data = (DATA / f"{name}.npz").read_bytes()
    assert cls.from_bytes(data).to_bytes() == data
