"""OpenCV peer: YuNet (FaceDetectorYN) on WIDER, YuNet + SFace (FaceRecognizerSF) on LFW.

Runs the models the way OpenCV's ``samples/dnn/face_detect.py`` does: ``cv.imread`` (BGR),
``setInputSize`` to the native image size, ``detect``; for recognition ``alignCrop`` then
``feature``. Model files are passed in (faceflow's model store holds them).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import _common as c

THREADS = c.preset_threads()

import cv2  # noqa: E402
import numpy as np  # noqa: E402

DISTS = ("opencv-python-headless", "opencv-python", "numpy")


def centre_face(faces: np.ndarray | None, w: int, h: int) -> np.ndarray | None:
    """Return the YuNet row whose box centre is nearest the image centre."""
    if faces is None or len(faces) == 0:
        return None
    centres = [(f[0] + f[2] / 2, f[1] + f[3] / 2) for f in faces]
    return faces[c.nearest_index(centres, (w / 2, h / 2))]


def run_wider(args, det, w: c.Writer) -> None:
    """Detect every face of each WIDER image at native size."""
    items = c.list_items("wider", args.root, args.limit)
    for i, rel in enumerate(items, 1):
        img = cv2.imread(str(c.image_path("wider", args.root, rel)))
        t = time.perf_counter()
        det.setInputSize((img.shape[1], img.shape[0]))
        _, faces = det.detect(img)
        ms = c.ms_since(t)
        boxes = (
            []
            if faces is None
            else [
                [
                    round(float(f[0]), 2),
                    round(float(f[1]), 2),
                    round(float(f[0] + f[2]), 2),
                    round(float(f[1] + f[3]), 2),
                    round(float(f[14]), 5),
                ]
                for f in faces
            ]
        )
        w.write({"path": rel, "boxes": boxes, "ms": ms})
        c.progress(i, len(items), 50)


def run_lfw(args, det, w: c.Writer) -> None:
    """Embed each LFW image: centre face, alignCrop, feature; misses get the mean face row."""
    rec = cv2.FaceRecognizerSF.create(str(args.sface), "")
    items = c.list_items("lfw", args.root, args.limit)
    feats: list[np.ndarray | None] = []
    rows: list[np.ndarray | None] = []
    times: list[float] = []
    for i, rel in enumerate(items, 1):
        img = cv2.imread(str(args.root / rel))
        t = time.perf_counter()
        det.setInputSize((img.shape[1], img.shape[0]))
        _, faces = det.detect(img)
        face = centre_face(faces, img.shape[1], img.shape[0])
        feat = None
        if face is not None:
            feat = rec.feature(rec.alignCrop(img, face)).reshape(-1).copy()
        times.append(c.ms_since(t))
        feats.append(feat)
        rows.append(None if face is None else face.copy())
        c.progress(i, len(items), 500)
    found = [r for r in rows if r is not None]
    mean_row = np.mean(np.stack(found), axis=0).astype(np.float32) if found else None
    misses = [k for k, f in enumerate(feats) if f is None]
    print(f"  no face in {len(misses)} images; using the mean face row", file=sys.stderr)
    for k in misses:
        img = cv2.imread(str(args.root / items[k]))
        t = time.perf_counter()
        feats[k] = rec.feature(rec.alignCrop(img, mean_row)).reshape(-1).copy()
        times[k] = round(times[k] + c.ms_since(t), 2)
    emb = np.stack(feats).astype(np.float32)
    np.save(args.out.with_suffix(".npy"), emb)
    for k, rel in enumerate(items):
        r = rows[k] if rows[k] is not None else mean_row
        w.write(
            {
                "path": rel,
                "row": k,
                "fallback": rows[k] is None,
                "ms": times[k],
                "box": [round(float(v), 2) for v in (r[0], r[1], r[0] + r[2], r[1] + r[3])],
            }
        )
    w.header["embeddings"] = args.out.with_suffix(".npy").name
    w.header["n_fallback"] = len(misses)
    w.header["fallback_row"] = [round(float(v), 3) for v in mean_row[:14]]


def main() -> None:
    """Parse arguments and run one task."""
    p = c.make_parser("OpenCV YuNet/SFace", ("wider", "lfw"))
    p.add_argument("--yunet", required=True, type=Path, help="face_detection_yunet_2023mar.onnx")
    p.add_argument("--sface", type=Path, help="face_recognition_sface_2021dec_int8bq.onnx (lfw)")
    p.add_argument("--score", type=float, help="score threshold (default: wider 0.05, lfw 0.9)")
    p.add_argument("--nms", type=float, default=0.3)
    p.add_argument("--top-k", type=int, default=5000)
    args = p.parse_args()
    if args.task == "lfw" and args.sface is None:
        p.error("--sface is required for lfw")
    cv2.setNumThreads(args.threads)
    score = args.score if args.score is not None else (0.05 if args.task == "wider" else 0.9)
    det = cv2.FaceDetectorYN.create(str(args.yunet), "", (320, 320), score, args.nms, args.top_k)
    settings = {
        "yunet": args.yunet.name,
        "score": score,
        "nms": args.nms,
        "top_k": args.top_k,
        "input": "native size",
        "threads": args.threads,
    }
    if args.task == "lfw":
        settings.update(
            sface=args.sface.name,
            pick="face nearest image centre",
            fallback="mean face row (box + landmarks) of found faces",
            metric="cosine",
        )
    w = c.Writer(args.out, "opencv", args.task, settings, DISTS)
    w.header["versions"]["cv2"] = cv2.__version__
    (run_wider if args.task == "wider" else run_lfw)(args, det, w)
    w.close()


if __name__ == "__main__":
    main()
