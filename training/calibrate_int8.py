"""Calibrate a recognition network's int8 activation ranges on UTKFace and write its range file.

    FACEFLOW_THREADS=1 .venv/bin/python training/calibrate_int8.py sface --utkface ../shared/datasets/utkface
    FACEFLOW_THREADS=1 .venv/bin/python training/calibrate_int8.py dlib --utkface ../shared/datasets/utkface

The faces: the first ``--count`` images of ``training/splits/utkface_train.txt`` (UTKFace's train part;
never LFW, which the int8 models are scored on), each image's highest-scoring YuNet face cut as the
fp32 embedder cuts it: aligned to 112x112 for SFace (:class:`faceflow.recognize.SFaceEmbedder`), dlib's
150x150 chip for dlib's ResNet (:class:`faceflow.recognize.DlibEmbedder`). The ranges are the MinMax of
each tensor a quantised operator reads or writes, over those faces: for SFace on the graph that
:func:`faceflow.models.quantize.prepare_sface` makes from the fp32 file, for dlib on the ONNX conversion
of its network (operators :data:`faceflow.models.quantize.DLIB_OPS`). ``sface_int8`` and ``dlib_int8``
are derived from these files at pull time. Prints the file's sha256 and size (for
:mod:`faceflow.models.registry`) and, with ``--out`` elsewhere, whether its ranges equal the packaged
file's. ONNX Runtime writes the tensors in an order that follows Python's string hashing, so two runs
give the same ranges in a different byte order: compare ranges, not bytes.

Run on 2026-12-07 with --count 200 for both (200 faces found in 200 images); rerun the same day with
``--out /tmp/...``: the same ranges, tensor for tensor, for both networks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.models.quantize import calibrate_dlib, calibrate_sface
from faceflow.models.runtime import Runtime, model_path
from faceflow.recognize import DlibEmbedder, SFaceEmbedder
from faceflow.types import FloatArray

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "src" / "faceflow" / "data"
NETWORKS: dict[str, tuple[type[SFaceEmbedder] | type[DlibEmbedder], str,
                          Callable[[Path, FloatArray, Path], None]]] = {
    "sface": (SFaceEmbedder, "sface", calibrate_sface),
    "dlib": (DlibEmbedder, "dlib_resnet_onnx", calibrate_dlib),
}
"""network -> (embedder whose crops it reads, registry name of the fp32 graph, calibration function)."""


def calibration_crops(network: str, root: Path, count: int) -> FloatArray:
    """The network's inputs (N, 3, H, W float32) from the first ``count`` UTKFace train images with a face."""
    names = [line.strip() for line in (HERE / "splits" / "utkface_train.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")][:count]
    runtime = Runtime(threads=1)
    detector, embedder = create_detector("yunet", runtime=runtime), NETWORKS[network][0](runtime=runtime)
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
    ap.add_argument("network", choices=sorted(NETWORKS))
    ap.add_argument("--utkface", type=Path, required=True, help="the UTKFace folder (its *.jpg.chip.jpg files)")
    ap.add_argument("--count", type=int, default=200, help="calibration images from the train part")
    ap.add_argument("--out", type=Path, help="where to write (default: the packaged range file)")
    args = ap.parse_args()
    _, graph, calibrate = NETWORKS[args.network]
    out = args.out or DATA / f"{args.network}_int8_ranges.json"
    calibrate(model_path(graph), calibration_crops(args.network, args.utkface, args.count), out)
    data = out.read_bytes()
    print(f"{out.name}: sha256 {hashlib.sha256(data).hexdigest()} size {len(data)}")
    packaged = DATA / f"{args.network}_int8_ranges.json"
    if out.resolve() != packaged.resolve():
        same = json.loads(data)["data"] == json.loads(packaged.read_bytes())["data"]
        print(f"same ranges as the packaged {packaged.name}: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
