"""Train faceflow's age and gender heads (:mod:`faceflow.attribute_heads`) on UTKFace.

    features  detect (YuNet, the face nearest the centre, as ``faceflow eval utkface``) and cache the
              raw feature blocks of every image once (resumable)
    train     select hyper-parameters on the val part, fit on the train part, write the heads JSON

Placeholder: the training part follows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Single-threaded BLAS and runtimes before numpy loads: the same bits on every run.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "FACEFLOW_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from faceflow.attribute_heads import RAW_BLOCKS, HeadFeatureExtractor  # noqa: E402
from faceflow.detect import create_detector  # noqa: E402
from faceflow.eval.tasks import nearest  # noqa: E402
from faceflow.eval.utkface import load_utkface  # noqa: E402
from faceflow.io import load_image  # noqa: E402
from faceflow.models.store import faceflow_home  # noqa: E402

DEFAULT_CACHE = faceflow_home() / "training" / "utkface_head_features.npz"


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def extract(root: Path, cache: Path, every: int = 200) -> None:
    """Cache the raw blocks of the face nearest the centre of every UTKFace image (NaN where none)."""
    images, _ = load_utkface(root)
    names = np.array([im.path.name for im in images])
    n = len(names)
    if cache.exists():
        arrays = dict(np.load(cache))
        if list(arrays["names"]) != list(names):
            sys.exit(f"{cache} was made from other images; remove it first")
    else:
        arrays = {"names": names, "done": np.zeros(n, bool), "found": np.zeros(n, bool),
                  "box": np.full((n, 4), np.nan, np.float32)}
        arrays.update({k: np.full((n, *s), np.nan, np.float32) for k, s in RAW_BLOCKS.items()})
    detector, extractor = create_detector("yunet"), HeadFeatureExtractor()
    todo = np.flatnonzero(~arrays["done"])
    t0 = time.perf_counter()
    for j, i in enumerate(todo, 1):
        image = load_image(images[i].path)
        faces = detector.detect(image)
        if faces:
            face = nearest(faces, (image.shape[1] / 2, image.shape[0] / 2))
            for k, v in extractor.raw(image, [face]).items():
                arrays[k][i] = v[0]
            arrays["found"][i], arrays["box"][i] = True, face.box
        arrays["done"][i] = True
        if j % every == 0 or j == len(todo):
            _save(cache, arrays)
            print(f"{j}/{len(todo)} images, {(time.perf_counter() - t0) / j:.2f} s each", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``features`` or ``train``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="cache the raw feature blocks of every image")
    f.add_argument("--root", type=Path, default=Path("../shared/datasets/utkface"))
    f.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args(argv)
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    if args.command == "features":
        extract(args.root, args.cache)


if __name__ == "__main__":
    main()
