"""Choose the average-linkage threshold of ``faceflow cluster`` for one recognition model, on LFW.

LFW's people are split in two by the SHA-1 of their name (first hex digit even: the tuning half,
``faceflow.eval.clustering.lfw_tuning_half``); the threshold with the best pairwise F on the tuning
half, over a grid, is the one to use, and the other half reports what it gives on people it never
saw (the half ``faceflow eval clustering`` scores). The embeddings are the same as
``faceflow eval clustering`` computes (and share its per-image cache)::

    .venv/bin/python training/fit_cluster_threshold.py --root ../shared/datasets/lfw --model fused

The values chosen are written in ``faceflow.gallery.cluster.CLUSTER_THRESHOLDS``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from faceflow.eval.clustering import run_clustering
from faceflow.eval.tasks import lfw_gallery_embedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="LFW folder (<Person>/<image>.jpg)")
    ap.add_argument("--model", default="sface", help="sface, dlib or fused (each with its default flip)")
    ap.add_argument("--grid", default="0.20:0.90:0.01", help="start:stop:step of the thresholds tried")
    args = ap.parse_args()
    start, stop, step = (float(x) for x in args.grid.split(":"))
    embed = lfw_gallery_embedder(args.model)
    grid = np.round(np.arange(start, stop + step / 2, step), 4)
    tuned = {float(t): run_clustering(args.root, embed, threshold=float(t), people="tuning")["pairwise_f"]
             for t in grid}
    best = max(tuned, key=lambda t: (tuned[t], -t))
    held = run_clustering(args.root, embed, threshold=best, people="held-out")
    print(json.dumps({"model": args.model, "threshold": best, "tuning_half_pairwise_f": round(tuned[best], 4),
                      "other_half_pairwise_f": round(held["pairwise_f"], 4),
                      "other_half_bcubed_f": round(held["bcubed_f"], 4)}, indent=2))


if __name__ == "__main__":
    main()
