"""Annotated copies: encoding and writing under any file name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from faceflow.draw import encode_image, save_image


def test_save_image_under_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    """cv2.imwrite took the name as UTF-8 text and crashed the process (SIGSEGV) on such a name."""
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :10] = (255, 0, 0)
    target = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png")
    save_image(image, target)
    assert np.array_equal(np.asarray(PILImage.open(target).convert("RGB")), image)  # RGB kept, not BGR


def test_encode_image_refuses_what_the_format_cannot_hold() -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        encode_image(np.zeros((8, 70000, 3), np.uint8), ".jpg")  # JPEG sides stop at 65,535
