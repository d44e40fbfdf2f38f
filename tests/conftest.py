"""Shared fixtures: the evaluation data (skipped with a message when absent) and sample photos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    """``FACEFLOW_DATASETS``, or ``../shared/datasets`` beside the repository."""
    env = os.environ.get("FACEFLOW_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets() -> Path:
    root = datasets_root()
    if not root.is_dir():
        pytest.skip(f"evaluation data not found at {root} (set FACEFLOW_DATASETS)")
    return root


@pytest.fixture(scope="session")
def dataset(datasets: Path):  # type: ignore[no-untyped-def]
    """``dataset("lfw")`` -> path, skipping the test when that part of the data is absent."""

    def get(*parts: str) -> Path:
        p = datasets.joinpath(*parts)
        if not p.exists():
            pytest.skip(f"{p} is absent")
        return p

    return get


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins): one frontal face, RGB 512x512."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


ASTRONAUT_FACE_BOX = (176.0, 60.0, 270.0, 180.0)
"""Box around the astronaut's face (forehead to chin, cheek to cheek), x1, y1, x2, y2: measured on a
4x zoom with a 10 px grid (chin at y 180, cheeks at x 178 and 268); YuNet's and CenterFace's boxes
overlap it with IoU 0.92 and 0.93. The first hand-measured box, (170, 50, 282, 188), took in hair
above, the neck below and hair at the sides (IoU 0.66 with YuNet's box)."""


# Property-based tests explore new examples on a developer's machine; in CI (CI=true) they replay a
# fixed, derandomised set, so a submission's result does not depend on the draw.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    _hypothesis_settings.load_profile("ci")
