"""face_recognition peer: 128-d encodings on LFW, dlib 68-point landmarks on 300-W.

As face_recognition's README shows: ``load_image_file`` (RGB), ``face_locations(img,
number_of_times_to_upsample=1, model="hog")``, then ``face_encodings(img, [box], model="small")``
(5-point alignment) or ``face_landmarks(img, boxes, model="large")`` (68 points).
LFW: the face nearest the image centre; images with no HOG face are encoded in a second pass
with a fixed box, the per-coordinate median of the boxes found in the first pass.
300-W: the face whose box centre is nearest the centre of the ground-truth points.
"""

from __future__ import annotations

import sys
import time

import _common as c

THREADS = c.preset_threads()

import face_recognition as fr  # noqa: E402
import numpy as np  # noqa: E402

DISTS = ("face_recognition", "face_recognition_models", "dlib-bin", "numpy", "pillow")


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    top, right, bottom, left = box
    return ((left + right) / 2, (top + bottom) / 2)


def ibug68(d: dict[str, list[tuple[int, int]]]) -> list[list[int]]:
    """Rebuild the 68 points in iBUG order from ``face_landmarks``' named groups."""
    top, bot = d["top_lip"], d["bottom_lip"]
    pts = (
        d["chin"]
        + d["left_eyebrow"]
        + d["right_eyebrow"]
        + d["nose_bridge"]
        + d["nose_tip"]
        + d["left_eye"]
        + d["right_eye"]
        + top[0:7]
        + bot[1:6]
        + [top[11], top[10], top[9], top[8], top[7], bot[10], bot[9], bot[8]]
    )
    return [[int(x), int(y)] for x, y in pts]


def run_lfw(args, w: c.Writer) -> None:
    """Encode each LFW image (two passes: detections, then the median-box fallback)."""
    items = c.list_items("lfw", args.root, args.limit)
    encs: list[np.ndarray | None] = []
    boxes: list[tuple[int, int, int, int] | None] = []
    times: list[float] = []
    for i, rel in enumerate(items, 1):
        img = fr.load_image_file(args.root / rel)
        t = time.perf_counter()
        locs = fr.face_locations(img, number_of_times_to_upsample=args.upsample, model="hog")
        box = enc = None
        if locs:
            h, wd = img.shape[:2]
            box = locs[c.nearest_index([_centre(b) for b in locs], (wd / 2, h / 2))]
            enc = fr.face_encodings(img, known_face_locations=[box], num_jitters=1, model="small")[0]
        times.append(c.ms_since(t))
        encs.append(enc)
        boxes.append(box)
        c.progress(i, len(items), 250)
    found = np.array([b for b in boxes if b is not None], dtype=np.float64)
    median = tuple(round(float(v)) for v in np.median(found, axis=0)) if len(found) else None
    misses = [k for k, e in enumerate(encs) if e is None]
    print(f"  no face in {len(misses)} images; fixed median box {median}", file=sys.stderr)
    for k in misses:
        img = fr.load_image_file(args.root / items[k])
        t = time.perf_counter()
        encs[k] = fr.face_encodings(img, known_face_locations=[median], num_jitters=1, model="small")[0]
        times[k] = round(times[k] + c.ms_since(t), 2)
    np.save(args.out.with_suffix(".npy"), np.stack(encs).astype(np.float32))
    for k, rel in enumerate(items):
        top, right, bottom, left = boxes[k] if boxes[k] is not None else median
        w.write(
            {"path": rel, "row": k, "fallback": boxes[k] is None, "ms": times[k], "box": [left, top, right, bottom]}
        )
    w.header.update(
        embeddings=args.out.with_suffix(".npy").name,
        n_fallback=len(misses),
        fallback_box_ltrb=[median[3], median[0], median[1], median[2]],
    )


def run_300w(args, w: c.Writer) -> None:
    """68 landmarks from HOG boxes; keep the face nearest the ground-truth centre."""
    items = c.list_items("300w", args.root, args.limit)
    for i, rel in enumerate(items, 1):
        path = args.root / rel
        gt = np.array(c.read_pts(path.with_suffix(".pts")))
        gc = ((gt[:, 0].min() + gt[:, 0].max()) / 2, (gt[:, 1].min() + gt[:, 1].max()) / 2)
        img = fr.load_image_file(path)
        t = time.perf_counter()
        locs = fr.face_locations(img, number_of_times_to_upsample=args.upsample, model="hog")
        lms = fr.face_landmarks(img, face_locations=locs, model="large") if locs else []
        ms = c.ms_since(t)
        rec = {"path": rel, "landmarks68": None, "box": None, "n_faces": len(locs), "ms": ms}
        if locs:
            k = c.nearest_index([_centre(b) for b in locs], gc)
            top, right, bottom, left = locs[k]
            rec.update(landmarks68=ibug68(lms[k]), box=[left, top, right, bottom])
        w.write(rec)
        c.progress(i, len(items), 50)


def main() -> None:
    """Parse arguments and run one task."""
    p = c.make_parser("face_recognition", ("lfw", "300w"))
    p.add_argument("--upsample", type=int, default=1, help="HOG number_of_times_to_upsample")
    args = p.parse_args()
    settings = {"detector": "hog", "upsample": args.upsample, "threads": args.threads}
    if args.task == "lfw":
        settings.update(
            encoding_model="small (5-point)",
            num_jitters=1,
            metric="euclidean",
            pick="face nearest image centre",
            fallback="fixed box: per-coordinate median of the found boxes (2nd pass)",
        )
    else:
        settings.update(landmark_model="large (68-point)", pick="face nearest ground-truth centre")
    w = c.Writer(args.out, "face_recognition", args.task, settings, DISTS)
    (run_lfw if args.task == "lfw" else run_300w)(args, w)
    w.close()


if __name__ == "__main__":
    main()
