"""Fit ``MESH_BLEND_68`` (:mod:`faceflow.landmarks`): the iBUG 68 points as blends of mesh vertices.

    FACEFLOW_THREADS=1 .venv/bin/python training/fit_mesh_to_68.py --datasets ../shared/datasets

Distillation, no 300-W data: the teacher is faceflow's dlib route (``Landmarks68Stage("dlib")``: YuNet's
box and five points, mirrored and averaged), the student the mesh (``MeshStage``), on the faces of
:func:`fit_images` (500 LFW, 500 UTKFace train), each also read mirrored (the mirrored mesh against the
teacher's points in mirrored order), 2,000 samples. For each iBUG point the script picks the mesh
vertex, or the convex blend of two of the ten best vertices with a weight on a 0.05 grid, whose mean
distance to the teacher's point, over the teacher's outer-eye-corner distance, is least. Run
``training/fit_dlib_box.py`` first: the teacher's boxes come from the constants it fits.

It prints the table to paste into ``landmarks.py``, and the error against the teacher on one dataset
of a table fitted on the other (single vertices against blends of two), which is how two was chosen.
The result is deterministic on a given machine and library versions (one thread per model).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from pathlib import Path

import numpy as np
import numpy.typing as npt

from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.landmarks import MIRROR_68, Landmarks68Stage, MeshStage
from faceflow.types import Face

PER_DATASET = 500
CANDIDATES = 10
WEIGHT_STEP = 0.05
SPLITS = Path(__file__).resolve().parent / "splits"

Blend = tuple[tuple[int, float], ...]


def _sha1(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def fit_images(datasets: Path, n: int = PER_DATASET) -> dict[str, list[Path]]:
    """The fitting images: the first image (by name) of each of the ``n`` LFW people with the smallest
    ``sha1(name)``, and the ``n`` UTKFace train-split images with the smallest ``sha1(file name)``."""
    people = sorted((p for p in (datasets / "lfw").iterdir() if p.is_dir()), key=lambda p: _sha1(p.name))
    lfw = [min(p.glob("*.jpg")) for p in people[:n]]
    train = [ln for ln in (SPLITS / "utkface_train.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    utk = [datasets / "utkface" / name for name in sorted(train, key=_sha1)[:n]]
    return {"lfw": lfw, "utkface": utk}


def central_face(faces: list[Face], image: npt.NDArray[np.uint8]) -> Face | None:
    """The face whose box centre is nearest the image centre, ``None`` when there is none."""
    h, w = image.shape[:2]
    return min(faces, key=lambda f: float(np.hypot(f.center[0] - w / 2, f.center[1] - h / 2)), default=None)


def samples(paths: list[Path]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Meshes ``(n, 468, 2)`` and teacher points ``(n, 68, 2)``: each face, then its mirror image."""
    detector, mesh, teacher = create_detector("yunet"), MeshStage(), Landmarks68Stage("dlib")
    meshes, points = [], []
    for path in paths:
        image = load_image(path)
        face = central_face(detector.detect(image), image)
        if face is None:
            print(f"no face: {path}")
            continue
        target = teacher.predict(image, face).astype(np.float64)
        for mirror, order in ((False, slice(None)), (True, list(MIRROR_68))):
            meshes.append(mesh.predict(image, face, mirror=mirror)[0][:, :2].astype(np.float64))
            points.append(target[order])
    return np.array(meshes), np.array(points)


def _errors(pred: npt.NDArray[np.float64], target: npt.NDArray[np.float64], iod: npt.NDArray[np.float64]) -> float:
    return float(np.mean(np.linalg.norm(pred - target, axis=-1) / iod))


def fit_point(
    meshes: npt.NDArray[np.float64], target: npt.NDArray[np.float64], iod: npt.NDArray[np.float64], vertices: int = 2
) -> Blend:
    """The blend of up to ``vertices`` (1 or 2) mesh vertices nearest ``target`` ``(n, 2)`` on average."""
    single = (np.linalg.norm(meshes - target[:, None], axis=2) / iod[:, None]).mean(0)
    order = np.argsort(single, kind="stable")
    best: tuple[float, Blend] = (float(single[order[0]]), ((int(order[0]), 1.0),))
    if vertices < 2:
        return best[1]
    grid = np.round(np.arange(1, round(1 / WEIGHT_STEP)) * WEIGHT_STEP, 2)
    for a, b in itertools.combinations(order[:CANDIDATES].tolist(), 2):
        for w in grid:
            err = _errors(w * meshes[:, a] + (1 - w) * meshes[:, b], target, iod)
            if err < best[0]:
                best = (err, ((a, float(w)), (b, float(round(1 - w, 2)))))
    return best[1]


def fit_table(meshes: npt.NDArray[np.float64], points: npt.NDArray[np.float64], vertices: int = 2) -> list[Blend]:
    """One blend per iBUG point (:func:`fit_point`)."""
    iod = np.linalg.norm(points[:, 36] - points[:, 45], axis=1)
    return [fit_point(meshes, points[:, j], iod, vertices) for j in range(68)]


def table_error(table: list[Blend], meshes: npt.NDArray[np.float64], points: npt.NDArray[np.float64]) -> float:
    """Mean point error of ``table`` against the teacher, over the teacher's outer-eye-corner distance."""
    pred = np.stack([sum(w * meshes[:, v] for v, w in blend) for blend in table], axis=1)
    iod = np.linalg.norm(points[:, 36] - points[:, 45], axis=1)
    return _errors(pred, points, iod[:, None])


def format_table(table: list[Blend]) -> str:
    """The table as Python source, one iBUG point per line."""
    rows = [
        "(" + ", ".join(f"({v}, {w!r})" for v, w in blend) + ("," if len(blend) == 1 else "") + ")" for blend in table
    ]
    return "MESH_BLEND_68 = (\n" + "".join(f"    {r},  # {j}\n" for j, r in enumerate(rows)) + ")"


def main(argv: list[str] | None = None) -> None:
    """Collect the samples, check single vertices against blends across datasets, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    args = parser.parse_args(argv)
    data = {name: samples(paths) for name, paths in fit_images(args.datasets).items()}
    for train, test in itertools.permutations(data, 2):
        for vertices in (1, 2):
            table = fit_table(*data[train], vertices)
            held_out, seen = (100 * table_error(table, *data[name]) for name in (test, train))
            print(f"{vertices}-vertex table from {train}: error on {test} {held_out:.2f} %, on {train} {seen:.2f} %")
    meshes, points = (np.concatenate(parts) for parts in zip(*data.values(), strict=True))
    table = fit_table(meshes, points)
    print(f"{len(meshes)} samples; error against the teacher {100 * table_error(table, meshes, points):.2f} %")
    print(format_table(table))


if __name__ == "__main__":
    main()
