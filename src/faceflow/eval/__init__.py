"""Evaluation protocols (LFW, WIDER FACE, 300-W, UTKFace) over plain callables, plus reports and a cache.

Each protocol has a loader for the official layout, an ``evaluate_*`` function over plain arrays
(unit-testable without any model) and a ``run_*`` runner that calls a model through a plain callable.
"""

from faceflow.eval.cache import ResultCache, timed
from faceflow.eval.lfw import Pair, cosine_scores, evaluate_lfw, read_pairs, roc_curve, run_lfw
from faceflow.eval.report import plot_protocol, print_tables, to_jsonable, write_json, write_report
from faceflow.eval.utkface import UTKFaceImage, evaluate_utkface, load_utkface, parse_utkface_name, run_utkface
from faceflow.eval.w300 import W300Image, evaluate_300w, load_300w, nme, read_pts, run_300w
from faceflow.eval.wider import (
    WiderImage,
    boxes_from_faces,
    evaluate_wider,
    event_parity,
    half_aps,
    load_wider,
    run_wider,
    voc_ap,
)

__all__ = [
    "Pair",
    "ResultCache",
    "UTKFaceImage",
    "W300Image",
    "WiderImage",
    "boxes_from_faces",
    "cosine_scores",
    "evaluate_300w",
    "evaluate_lfw",
    "evaluate_utkface",
    "evaluate_wider",
    "event_parity",
    "half_aps",
    "load_300w",
    "load_utkface",
    "load_wider",
    "nme",
    "parse_utkface_name",
    "plot_protocol",
    "print_tables",
    "read_pairs",
    "read_pts",
    "roc_curve",
    "run_300w",
    "run_lfw",
    "run_utkface",
    "run_wider",
    "timed",
    "to_jsonable",
    "voc_ap",
    "write_json",
    "write_report",
]
