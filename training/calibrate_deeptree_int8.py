"""Calibrate the deep-tree liveness network's int8 activation ranges and write
``faceflow/data/deeptree_int8_ranges.json``.

    FACEFLOW_THREADS=1 .venv/bin/python training/calibrate_deeptree_int8.py --lfw ../shared/datasets/lfw

The faces: the first image of each of the first ``--count`` people (sorted by name) of LFW, each
image's largest YuNet face cropped as :class:`faceflow.liveness.models.DeepTree` crops it (1.2 times the
box, 256 px, RGB / 255). Neither liveness source (NUAA, MSU-MFSD) is used, so the ranges are fitted on
no image that ``faceflow eval antispoof`` tests on, in either direction. The ranges are the MinMax of
each tensor a quantised operator reads or writes, on the deep-tree graph converted to ONNX
(:mod:`faceflow.models.tflite_onnx`); ``deeptree_int8`` is derived from them at pull time. Prints the
file's sha256 and size (for :mod:`faceflow.models.registry`).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.liveness.models import DeepTree
from faceflow.models import registry
from faceflow.models.quantize import calibrate_deeptree
from faceflow.models.runtime import Runtime
from faceflow.models.store import default_store
from faceflow.types import largest_face

OUT = Path(__file__).resolve().parents[1] / "src" / "faceflow" / "data" / "deeptree_int8_ranges.json"


def calibration_crops(root: Path, count: int) -> np.ndarray:
    """DeepTree inputs (N, 256, 256, 3 float32) of the first image of the first ``count`` LFW people."""
    people = sorted(p for p in root.iterdir() if p.is_dir())[:count]
    detector = create_detector("yunet", runtime=Runtime(threads=1))
    crops = []
    for person in people:
        image = load_image(sorted(person.glob("*.jpg"))[0])
        face = largest_face(detector.detect(image))
        if face is not None:
            crops.append(DeepTree.inputs(image, [face.box])[0])
    print(f"{len(crops)} faces in {len(people)} images")
    return np.stack(crops).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, required=True, help="the LFW folder (one sub-folder per person)")
    ap.add_argument("--count", type=int, default=100, help="calibration people (one image each)")
    args = ap.parse_args()
    source = default_store().fetch_file(registry.DEEPTREE_ONNX_FILE)
    calibrate_deeptree(source, calibration_crops(args.lfw, args.count), OUT)
    data = OUT.read_bytes()
    print(f"{OUT.name}: sha256 {hashlib.sha256(data).hexdigest()} size {len(data)}")


if __name__ == "__main__":
    main()
