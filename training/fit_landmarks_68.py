"""Fit the 68-point regressions of the newer landmark models and write them to ``faceflow/data/``.

    FACEFLOW_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python training/fit_landmarks_68.py collect \
        --datasets ../shared/datasets
    FACEFLOW_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python training/fit_landmarks_68.py fit

Distillation, no 300-W data, as ``training/fit_mesh_to_68.py`` does for the 468-point mesh: the teacher
is faceflow's dlib route (``Landmarks68Stage("dlib")``: YuNet's box and five points, mirrored and
averaged); the students are

* ``landmarker``: MediaPipe's 478-point face landmarker (``face_landmarker``), run like the mesh stage
  (the detector's box squared, 1.5x, eye-level, then one pass re-centred on its own points);
* ``pfld``: PFLD-106 (``pfld106``), first on the detector's box (1.2x, upright), then once more on
  the region of its own points (:func:`faceflow.landmarks.roi_from_pfld`);
* ``faceapi``: face-api.js's 68-point network (``faceapi_landmark68``), first on the detector's box,
  then once more on the region of its own points (:func:`faceflow.landmarks.faceapi_68`).

on the faces of :func:`fit_mesh_to_68.fit_images` (the first image of 3,000 LFW people, 2,763 UTKFace
train-split images), each also read mirrored (against the teacher's points in mirrored order).
``collect`` runs the teacher and the students once and keeps their points in ``--cache``; ``fit``
fits a ridge regression per student (:class:`faceflow.landmarks.MeshTo68` on its points), picks each
penalty by the mean error against the teacher when fitted on one dataset and scored on the other
(both ways), fits on both, and prints the cross-dataset error of each student and of their weighted
mean (the ``fused`` source) for every weight triple on a 0.05 grid (:func:`fusion_grid`). It writes
``<student>_to_68.npz`` and prints their sha256 (for :mod:`faceflow.models.registry`). ``collect
--add faceapi`` adds one student's points to caches collected before it existed. ``heldout``
scores sources through ``Landmarks68Stage`` as shipped against the teacher on 500 LFW faces no
regression saw (:func:`held_out_images`): the figure that chose the default source. ``faceapi-crops``
scores face-api.js's crops on the same faces (:func:`faceapi_crops`).

Run on 2026-12-07 (2 cores shared; collect about 20 minutes per dataset, fit 4 minutes): penalties
0.3 (landmarker: 2.460 % lfw -> utkface, 3.137 % utkface -> lfw) and 1 (pfld: 3.174 %, 3.572 %);
fusion weight 0.75 (2.376 %, 2.931 %); sha256 af21af3a... and 23a12f25... . Held out, mirror on:
mesh 3.014 %, landmarker 2.627 %, pfld 2.970 %, fused 2.516 % (fused with ``--refine 2`` 2.508 %,
with ``--scale 1.4`` 2.493 %: neither kept, the regressions were fitted at 1.5 and one refinement).

``faceapi-crops`` (3 minutes): face-api.js's own points, box x 1.0 then its points x 1.3, 5.144 %, the
least of the grid (box x 1.1 or 1.2 then x 1.2: 5.152 %; the box alone at best 5.962 %).

Again later that day with the third student (``collect --add faceapi``, 2 minutes per dataset;
``fit``, 6 minutes): faceapi penalty 1 (2.677 %, 3.054 %), sha256 effebd16... (the two earlier
regressions came out within 6e-8 of the packaged ones, not byte-equal: those were kept). Best
weighting on the 0.05 grid: landmarker 0.45, pfld 0.15, faceapi 0.40, 2.492 % (mean of both ways;
the shipped 0.75 / 0.25 / 0: 2.653 %). Held out (``heldout --fusions "0.75,0.25,0;0.45,0.15,0.4;
0.55,0,0.45"``): faceapi 2.750 %, the three weightings 2.516 %, 2.457 %, 2.490 %. The 0.45 / 0.15 /
0.40 fusion did not beat the default on HELEN (3.43 % against 3.41 %), so ``fused`` was left as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_mesh_to_68 import REFERENCE_NORM, _sha1, central_face, fit_images

from faceflow.align import similarity_transform
from faceflow.detect import create_detector
from faceflow.io import load_image
from faceflow.landmarks import (
    LANDMARKER_INPUT,
    LANDMARKER_POINTS,
    MIRROR_68,
    Landmarks68Stage,
    LandmarksOptions,
    MeshTo68,
    faceapi_68,
    faceapi_in_roi,
    mesh_in_roi,
    mesh_roi,
    pfld_in_roi,
    pfld_roi,
    roi_from_68,
    roi_from_mesh,
    roi_from_pfld,
)
from faceflow.models.runtime import default_runtime

FIT_PER_DATASET = 3000
HELD_OUT = 500
ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
FUSION_STEP = 0.05
"""Step of the grid of fusion weights (each student's, summing to one) that :func:`fusion_grid` scores."""
DATA = Path(__file__).resolve().parents[1] / "src" / "faceflow" / "data"
CACHE = Path.home() / ".cache" / "faceflow" / "training" / "landmarks68"
STUDENTS = ("landmarker", "pfld", "faceapi")


def collect(paths: list[Path], out: Path, students: tuple[str, ...] = STUDENTS) -> None:
    """Teacher points and each student's points, on each face and on its mirror image, into ``out``.
    When ``out`` exists (and ``students`` is a part of :data:`STUDENTS`), only those students are run
    and their points are added to it; the faces must come out the same."""
    rt = default_runtime()
    detector, teacher = create_detector("yunet"), Landmarks68Stage("dlib")
    landmarker, pfld, faceapi = rt.tflite("face_landmarker"), rt.onnx("pfld106"), rt.onnx("faceapi_landmark68")
    adding = out.is_file() and set(students) != set(STUDENTS)
    rows: dict[str, list[npt.NDArray[np.float64]]] = {k: [] for k in ("teacher", "pfld_box", *students)}
    names = []
    for i, path in enumerate(paths):
        image = load_image(path)
        face = central_face(detector.detect(image), image)
        if face is None:
            print(f"no face: {path}")
            continue
        target = None if adding else teacher.predict(image, face).astype(np.float64)
        for mirror, order in ((False, slice(None)), (True, list(MIRROR_68))):
            if target is not None:
                rows["teacher"].append(target[order])
            if "landmarker" in students:
                lm, _ = mesh_in_roi(landmarker, image, mesh_roi(face.box, face.landmarks5, 1.5, mirror),
                                    LANDMARKER_INPUT, LANDMARKER_POINTS)
                lm, _ = mesh_in_roi(landmarker, image, roi_from_mesh(lm, 1.5, mirror), LANDMARKER_INPUT,
                                    LANDMARKER_POINTS)
                rows["landmarker"].append(lm.astype(np.float64))
            if "pfld" in students:
                first = pfld_in_roi(pfld, image, pfld_roi(face.box, mirror=mirror))
                rows["pfld_box"].append(first.astype(np.float64))
                rows["pfld"].append(pfld_in_roi(pfld, image, roi_from_pfld(first, mirror=mirror)).astype(np.float64))
            if "faceapi" in students:
                rows["faceapi"].append(faceapi_68(faceapi, image, face.box, 1, mirror).astype(np.float64))
            names.append(f"{path.name}{'|mirror' if mirror else ''}")
        if i % 250 == 0:
            print(f"{out.name}: {i}/{len(paths)}", flush=True)
    arrays = {k: np.array(v) for k, v in rows.items() if v}
    if adding:
        with np.load(out) as old:
            if list(old["names"]) != names:
                raise SystemExit(f"{out}: the faces found differ from the cached ones; collect again")
            arrays = {**{k: old[k] for k in old.files if k != "names"}, **arrays}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, names=np.array(names), **arrays)


def fusion_grid(held: dict[str, dict[str, npt.NDArray[np.float64]]],
                data: dict[str, dict[str, npt.NDArray[np.float64]]]) -> list[tuple[float, dict[str, float]]]:
    """Every weighting of the students (a :data:`FUSION_STEP` grid, weights summing to one) with its mean
    error against the teacher on the other dataset (each student's regression fitted on one dataset,
    scored on the other, both ways), best first."""
    steps = round(1 / FUSION_STEP)
    out = []
    for a in range(steps + 1):
        for b in range(steps + 1 - a):
            w = dict(zip(STUDENTS, (a / steps, b / steps, (steps - a - b) / steps), strict=True))
            errs = [float(errors(sum(w[s] * held[s][d] for s in STUDENTS), data[d]["teacher"]).mean())
                    for d in ("utkface", "lfw")]
            out.append((float(np.mean(errs)), w))
    return sorted(out, key=lambda r: r[0])


def reference_points(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The frame's mean point set: a short generalised Procrustes, centred, scaled to REFERENCE_NORM."""
    ref = points[0, :, :2]
    for _ in range(2):
        laid = []
        for p in points:
            a = similarity_transform(p[:, :2], ref)
            laid.append(p[:, :2] @ a[:, :2].T + a[:, 2])
        ref = np.mean(laid, axis=0)
    ref = ref - ref.mean(0)
    return (ref * REFERENCE_NORM / np.sqrt((ref**2).sum())).astype(np.float32)


def design(shell: MeshTo68, students: npt.NDArray[np.float64], targets: npt.NDArray[np.float64]) -> tuple[
        npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Normalised inputs and the targets in the same frames."""
    x, y = [], []
    for s, t in zip(students, targets, strict=True):
        values, rot, shift = shell.normalise(s)
        x.append(values)
        y.append((t @ rot.T + shift).ravel())
    return np.array(x), np.array(y)


def ridge(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], reference: npt.NDArray[np.float32],
          alpha: float) -> MeshTo68:
    """Ridge regression (intercept unpenalised)."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return MeshTo68(reference, w.astype(np.float32), (y_mean - x_mean @ w).astype(np.float32))


def errors(pred: npt.NDArray[np.float64], points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per-face mean point error against the teacher, over the teacher's outer-eye-corner distance."""
    iod = np.linalg.norm(points[:, 36] - points[:, 45], axis=1)
    return np.asarray(np.linalg.norm(pred - points, axis=-1).mean(1) / iod, np.float64)


def fit_student(name: str, data: dict[str, dict[str, npt.NDArray[np.float64]]]) -> tuple[
        MeshTo68, dict[str, npt.NDArray[np.float64]]]:
    """The student's regression (penalty chosen across datasets) and its held-out predictions per dataset."""
    allpts = np.concatenate([d[name] for d in data.values()])
    reference = reference_points(allpts)
    dims = allpts.shape[2]
    shell = MeshTo68(reference, np.zeros((reference.shape[0] * dims, 136), np.float32), np.zeros(136, np.float32))
    mats = {k: design(shell, d[name], d["teacher"]) for k, d in data.items()}
    best, best_err, held = ALPHAS[0], np.inf, {}
    for alpha in ALPHAS:
        preds, errs = {}, []
        for a, b in (("lfw", "utkface"), ("utkface", "lfw")):
            model = ridge(*mats[a], reference, alpha)
            preds[b] = np.array([model(s) for s in data[b][name]])
            errs.append(float(errors(preds[b], data[b]["teacher"]).mean()))
        print(f"{name} alpha {alpha:g}: error on the other dataset {100 * errs[0]:.3f} % (lfw -> utkface), "
              f"{100 * errs[1]:.3f} % (utkface -> lfw)", flush=True)
        if np.mean(errs) < best_err:
            best, best_err, held = alpha, float(np.mean(errs)), preds
    x = np.concatenate([m[0] for m in mats.values()])
    y = np.concatenate([m[1] for m in mats.values()])
    print(f"{name}: alpha {best:g}, {len(x)} samples", flush=True)
    return ridge(x, y, reference, best), held


def held_out_images(datasets: Path, n: int = HELD_OUT) -> list[Path]:
    """The first image of the ``n`` LFW people after the fitting ones in ``sha1(name)`` order: faces no
    regression (this script's or ``fit_mesh_to_68.py``'s) was fitted on."""
    people = sorted((p for p in (datasets / "lfw").iterdir() if p.is_dir()), key=lambda p: _sha1(p.name))
    return [min(p.glob("*.jpg")) for p in people[FIT_PER_DATASET : FIT_PER_DATASET + n]]


def held_out(datasets: Path, sources: tuple[str, ...], scale: float = 1.5, refine: int = 1,
             fusions: tuple[tuple[float, ...], ...] = ()) -> None:
    """Each source's error against the teacher through ``Landmarks68Stage`` as shipped (mirror on),
    on :func:`held_out_images`: the figure that chooses the default source. ``fusions`` are weightings
    of :data:`STUDENTS` (in that order) scored too, from the stage's points of each student."""
    detector, teacher = create_detector("yunet"), Landmarks68Stage("dlib")
    needed = tuple(dict.fromkeys((*sources, *(STUDENTS if fusions else ()))))
    stages = {s: Landmarks68Stage(LandmarksOptions(source=s, scale=scale, refine=refine)) for s in needed}
    errs: dict[str, list[float]] = {s: [] for s in (*sources, *map(str, fusions))}
    for path in held_out_images(datasets):
        image = load_image(path)
        face = central_face(detector.detect(image), image)
        if face is None:
            continue
        target = teacher.predict(image, face).astype(np.float64)[None]
        points = {s: stage.predict(image, face).astype(np.float64)[None] for s, stage in stages.items()}
        for s in sources:
            errs[s].append(float(errors(points[s], target)[0]))
        for w in fusions:
            errs[str(w)].append(float(errors(sum(v * points[s] for s, v in zip(STUDENTS, w, strict=True)), target)[0]))
    for s, e in errs.items():
        print(f"{s} (scale {scale:g}, refine {refine}): error against the teacher on {len(e)} held-out LFW faces "
              f"{100 * np.mean(e):.3f} %", flush=True)


def faceapi_crops(datasets: Path, box_scales: tuple[float, ...] = (0.9, 1.0, 1.1, 1.2, 1.3),
                  point_scales: tuple[float, ...] = (1.0, 1.1, 1.2, 1.3, 1.4)) -> None:
    """face-api.js's own points (mirrored and averaged, no regression) against the teacher on
    :func:`held_out_images`, for each first crop (the box times ``box_scales``) and each refined crop
    (its points' extent times ``point_scales``): what chose :data:`faceflow.landmarks.FACEAPI_BOX_SCALE`
    and :data:`faceflow.landmarks.FACEAPI_SCALE`."""
    detector, teacher = create_detector("yunet"), Landmarks68Stage("dlib")
    session = default_runtime().onnx("faceapi_landmark68")
    grid = [(a, b) for a in box_scales for b in (None, *point_scales)]
    errs: dict[tuple[float, float | None], list[float]] = {k: [] for k in grid}
    for path in held_out_images(datasets):
        image = load_image(path)
        face = central_face(detector.detect(image), image)
        if face is None:
            continue
        target = teacher.predict(image, face).astype(np.float64)[None]
        for a, b in grid:
            reads = []
            for mirror in (False, True):
                pts = faceapi_in_roi(session, image, pfld_roi(face.box, a, mirror))
                if b is not None:
                    pts = faceapi_in_roi(session, image, roi_from_68(pts, b, mirror))
                reads.append(pts[list(MIRROR_68)] if mirror else pts)
            errs[(a, b)].append(float(errors(((reads[0] + reads[1]) / 2).astype(np.float64)[None], target)[0]))
    for (a, b), e in errs.items():
        refined = "no refinement" if b is None else f"points x {b:g}"
        print(f"faceapi crops: box x {a:g}, {refined}: error against the teacher on {len(e)} held-out LFW faces "
              f"{100 * np.mean(e):.3f} %", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("collect", "fit", "heldout", "faceapi-crops"))
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--only", choices=("lfw", "utkface"), help="collect: one dataset only")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--sources", default="mesh,landmarker,pfld,faceapi,fused", help="heldout: sources to score")
    parser.add_argument("--add", default=None, choices=STUDENTS,
                        help="collect: run only this student and add its points to the existing caches")
    parser.add_argument("--scale", type=float, default=1.5, help="heldout: the stage's scale option")
    parser.add_argument("--refine", type=int, default=1, help="heldout: the stage's refine option")
    parser.add_argument("--fusions", default="",
                        help="heldout: weightings of the students to score too, e.g. '0.75,0.25,0;0.5,0,0.5'")
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args(argv)
    if args.step == "faceapi-crops":
        faceapi_crops(args.datasets)
        return
    if args.step == "heldout":
        fusions = tuple(tuple(float(v) for v in f.split(",")) for f in args.fusions.split(";") if f)
        held_out(args.datasets, tuple(args.sources.split(",")), args.scale, args.refine, fusions)
        return
    if args.step == "collect":
        for name, paths in fit_images(args.datasets, FIT_PER_DATASET).items():
            if args.only in (None, name):
                collect(paths, args.cache / f"{name}.npz", (args.add,) if args.add else STUDENTS)
        return
    data = {}
    for name in ("lfw", "utkface"):
        with np.load(args.cache / f"{name}.npz") as z:
            data[name] = {k: z[k] for k in ("teacher", *STUDENTS)}
    held = {}
    for student in STUDENTS:
        model, held[student] = fit_student(student, data)
        blob = model.to_bytes()
        dest = args.out / f"{student}_to_68.npz"
        dest.write_bytes(blob)
        print(f"wrote {dest} ({len(blob):,} bytes), sha256 {hashlib.sha256(blob).hexdigest()}", flush=True)
    grid = fusion_grid(held, data)
    for err, w in [*grid[:5], *(r for r in grid if r[1]["faceapi"] == 0)][:10]:
        weights = ", ".join(f"{s} {v:.2f}" for s, v in w.items())
        print(f"fused, {weights}: error on the other dataset {100 * err:.3f} % (mean of both ways)")


if __name__ == "__main__":
    main()
