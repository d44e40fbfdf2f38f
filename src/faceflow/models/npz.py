"""The file format of the models faceflow trains itself (``faceflow/data/*.npz``): a zip of ``.npy``
arrays with fixed timestamps, so that the same model always gives the same bytes (and sha256)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt


def npz_bytes(arrays: Mapping[str, npt.ArrayLike]) -> bytes:
    """``arrays`` (in order, each as given: callers fix the dtype) as deterministic ``.npz`` bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.save(member, np.ascontiguousarray(value))
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                             member.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
