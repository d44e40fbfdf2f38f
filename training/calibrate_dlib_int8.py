"""Calibrate dlib ResNet's int8 activation ranges on UTKFace and write ``faceflow/data/dlib_int8_ranges.json``.

    FACEFLOW_THREADS=1 .venv/bin/python training/calibrate_dlib_int8.py --utkface ../shared/datasets/utkface

The faces: the first ``--count`` images of ``training/splits/utkface_train.txt`` (UTKFace's train part;
never LFW, which the result is scored on), each image's highest-scoring YuNet face cut into dlib's
150x150 chip as :class:`faceflow.recognize.DlibEmbedder` does. The ranges are the MinMax of each tensor
a quantised operator reads or writes (:data:`faceflow.models.quantize.DLIB_OPS`), over those faces, on
the ONNX conversion of dlib's network; ``dlib_int8`` is derived from them at pull time. Prints the
file's sha256 and size (for :mod:`faceflow.models.registry`).

Run on 2026-12-07 with --count 200 (200 faces found in 200 images).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.models.quantize import calibrate_dlib
from faceflow.models.runtime import Runtime
from faceflow.recognize import DlibEmbedder

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "src" / "faceflow" / "data" / "dlib_int8_ranges.json"


def calibration_crops(root: Path, count: int) -> np.ndarray:
    """dlib chips (N, 3, 150, 150 float32) of the first ``count`` UTKFace train images with a face."""
    names = [line.strip() for line in (HERE / "splits" / "utkface_train.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")][:count]
    runtime = Runtime(threads=1)
    detector, embedder = create_detector("yunet", runtime=runtime), DlibEmbedder(runtime=runtime)
    crops = []
    for name in names:
        image = load_image(root / name)
        faces = detector.detect(image)
        if faces:
            crops.append(embedder.crops(image, [max(faces, key=lambda f: f.score)])[0])
    print(f"{len(crops)} faces in {len(names)} images")
    return np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utkface", type=Path, required=True, help="the UTKFace folder (its *.jpg.chip.jpg files)")
    ap.add_argument("--count", type=int, default=200, help="calibration images from the train part")
    args = ap.parse_args()
    from faceflow.models.runtime import model_path

    calibrate_dlib(model_path("dlib_resnet_onnx"), calibration_crops(args.utkface, args.count), OUT)
    data = OUT.read_bytes()
    print(f"{OUT.name}: sha256 {hashlib.sha256(data).hexdigest()} size {len(data)}")


if __name__ == "__main__":
    main()
