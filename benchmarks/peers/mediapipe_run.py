"""MediaPipe peer: the legacy ``solutions.face_detection`` full-range model on WIDER.

As MediaPipe's face-detection docs show for static images: ``cv2.imread`` then
``FaceDetection(model_selection=1, min_detection_confidence=...)`` and
``process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))``; relative boxes are scaled to pixels.
MediaPipe exposes no thread setting here; the header records the threads it started.
"""

from __future__ import annotations

import time

import _common as c

THREADS = c.preset_threads()

import cv2  # noqa: E402
import mediapipe as mp  # noqa: E402

DISTS = ("mediapipe", "opencv-contrib-python", "numpy")


def main() -> None:
    """Parse arguments and run the detector over the WIDER subset."""
    p = c.make_parser("MediaPipe face detection", ("wider",))
    p.add_argument("--confidence", type=float, default=0.1)
    p.add_argument("--model-selection", type=int, default=1, help="0 short-range, 1 full-range")
    args = p.parse_args()
    cv2.setNumThreads(args.threads)
    settings = {
        "model_selection": args.model_selection,
        "min_detection_confidence": args.confidence,
        "input": "native size (MediaPipe resizes internally)",
        "threads": args.threads,
    }
    w = c.Writer(args.out, "mediapipe", args.task, settings, DISTS)
    items = c.list_items("wider", args.root, args.limit)
    with mp.solutions.face_detection.FaceDetection(
        model_selection=args.model_selection, min_detection_confidence=args.confidence
    ) as fd:
        for i, rel in enumerate(items, 1):
            image = cv2.imread(str(c.image_path("wider", args.root, rel)))
            h, wd = image.shape[:2]
            t = time.perf_counter()
            res = fd.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            ms = c.ms_since(t)
            boxes = []
            for d in res.detections or []:
                bb = d.location_data.relative_bounding_box
                x1, y1 = bb.xmin * wd, bb.ymin * h
                boxes.append(
                    [
                        round(x1, 2),
                        round(y1, 2),
                        round(x1 + bb.width * wd, 2),
                        round(y1 + bb.height * h, 2),
                        round(float(d.score[0]), 5),
                    ]
                )
            w.write({"path": rel, "boxes": boxes, "ms": ms})
            c.progress(i, len(items), 50)
    w.close()


if __name__ == "__main__":
    main()
