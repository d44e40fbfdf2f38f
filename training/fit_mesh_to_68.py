"""Fit the mesh-to-68 regression (:class:`faceflow.landmarks.MeshTo68`) and write ``faceflow/data/mesh_to_68.npz``.

    FACEFLOW_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python training/fit_mesh_to_68.py --datasets ../shared/datasets

Distillation, no 300-W data: the teacher is faceflow's dlib route (``Landmarks68Stage("dlib")``: YuNet's
box and five points, mirrored and averaged), the student the mesh (``MeshStage``), on the faces of
:func:`fit_images` with ``n=FIT_PER_DATASET`` (the first image of 3,000 LFW people, 2,763 UTKFace
train-split images), each also read mirrored (the mirrored mesh against the teacher's points in
mirrored order). The regression is ridge on the normalised mesh (:meth:`MeshTo68.normalise`) to the
teacher's points in the same frame; its penalty is the one of :data:`ALPHAS` with the least mean error
against the teacher when fitted on one dataset and scored on the other (both ways), and the model is
then fitted on both. Run ``training/fit_dlib_box.py`` first: the teacher's boxes come from its constants.

It prints the cross-dataset errors, writes the file and prints its sha256 (for ``MESH_TO_68_FILE`` in
:mod:`faceflow.models.registry`). A run takes about six minutes on one core. A rerun
writes the same bytes on the same machine and library versions (one thread per model and for BLAS;
checked: two runs, sha256 1632e3ff...); other BLAS builds may differ in the last bits of the weights.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from faceflow.align import similarity_transform
from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.landmarks import MIRROR_68, Landmarks68Stage, MeshStage, MeshTo68
from faceflow.models.registry import MESH_TO_68_FILE
from faceflow.types import Face, nearest_face

PER_DATASET = 500
FIT_PER_DATASET = 3000
ALPHAS = (0.3, 1.0, 3.0, 10.0, 30.0)
REFERENCE_NORM = 100.0
"""The reference mesh's x, y are centred and scaled to this root-sum-of-squares (the penalty's scale)."""
SPLITS = Path(__file__).resolve().parent / "splits"
OUT = Path(__file__).resolve().parents[1] / "src" / "faceflow" / "data" / MESH_TO_68_FILE.name
Samples = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]


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
    return nearest_face(faces, (w / 2, h / 2))


def samples(paths: list[Path]) -> Samples:
    """Meshes ``(n, 468, 3)`` and teacher points ``(n, 68, 2)``: each face, then its mirror image."""
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
            meshes.append(mesh.predict(image, face, mirror=mirror)[0].astype(np.float64))
            points.append(target[order])
    return np.array(meshes), np.array(points)


def reference_mesh(meshes: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The frame's mean mesh: the meshes' x, y laid onto the first one and averaged, twice (a short
    generalised Procrustes), centred and scaled to :data:`REFERENCE_NORM`."""
    ref = meshes[0, :, :2]
    for _ in range(2):
        onto = [similarity_transform(m[:, :2], ref) for m in meshes]
        laid = [m[:, :2] @ a[:, :2].T + a[:, 2] for m, a in zip(meshes, onto, strict=True)]
        ref = np.mean(laid, axis=0)
    ref = ref - ref.mean(0)
    return (ref * REFERENCE_NORM / np.sqrt((ref**2).sum())).astype(np.float32)


def fit(
    meshes: npt.NDArray[np.float64], points: npt.NDArray[np.float64], reference: npt.NDArray[np.float32], alpha: float
) -> MeshTo68:
    """Ridge regression (penalty ``alpha``, intercept unpenalised) of the teacher's points on the
    normalised meshes, both in the reference frame."""
    shell = MeshTo68(reference, np.zeros((1404, 136), np.float32), np.zeros(136, np.float32))
    x, y = np.empty((len(meshes), 1404)), np.empty((len(meshes), 136))
    for i, (m, p) in enumerate(zip(meshes, points, strict=True)):
        x[i], rot, shift = shell.normalise(m)
        y[i] = (p @ rot.T + shift).ravel()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(1404), xc.T @ (y - y_mean))
    return MeshTo68(reference, weights.astype(np.float32), (y_mean - x_mean @ weights).astype(np.float32))


def error(model: MeshTo68, meshes: npt.NDArray[np.float64], points: npt.NDArray[np.float64]) -> float:
    """Mean point error against the teacher, over the teacher's outer-eye-corner distance."""
    pred = np.array([model(m) for m in meshes], np.float64)
    iod = np.linalg.norm(points[:, 36] - points[:, 45], axis=1)
    return float(np.mean(np.linalg.norm(pred - points, axis=-1).mean(1) / iod))


def main(argv: list[str] | None = None) -> None:
    """Collect the samples, pick the penalty across datasets, fit on both, write the file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = {name: samples(paths) for name, paths in fit_images(args.datasets, FIT_PER_DATASET).items()}
    meshes, points = (np.concatenate(parts) for parts in zip(*data.values(), strict=True))
    reference = reference_mesh(meshes)
    scores = {}
    for alpha in ALPHAS:
        held_out = [
            error(fit(*data[a], reference, alpha), *data[b]) for a, b in (("lfw", "utkface"), ("utkface", "lfw"))
        ]
        scores[alpha] = float(np.mean(held_out))
        print(
            f"alpha {alpha:g}: error on the other dataset {100 * held_out[0]:.3f} % (lfw -> utkface), "
            f"{100 * held_out[1]:.3f} % (utkface -> lfw)"
        )
    alpha = min(scores, key=lambda a: scores[a])
    model = fit(meshes, points, reference, alpha)
    blob = model.to_bytes()
    args.out.write_bytes(blob)
    print(
        f"{len(meshes)} samples, alpha {alpha:g}: error against the teacher {100 * error(model, meshes, points):.3f} %"
    )
    print(f"wrote {args.out} ({len(blob):,} bytes), sha256 {hashlib.sha256(blob).hexdigest()}")


if __name__ == "__main__":
    main()
