"""One table, faceflow's rows beside the peers', for every protocol: ``RESULTS.md`` + ``RESULTS.json``.

Usage (faceflow's venv; the peers' raw outputs come from ``benchmarks/peers/run_all.sh``, which
``--run-peers`` runs first)::

    .venv/bin/python benchmarks/compare.py [--datasets ../shared/datasets] [--only lfw,wider] [--no-cache]
        [--threads 1] [--run-peers quick|all|JOB,JOB]

faceflow's figures come from the same functions ``faceflow eval`` runs (``faceflow.eval.tasks``), with
its default settings for each configuration named below; the peers' from ``peers/score.py`` over
their recorded outputs, scored by the same ``faceflow.eval`` metrics. Per-image results are cached
(``$FACEFLOW_HOME/eval-cache``), so a rerun after a scoring change is quick; ``--no-cache`` re-measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "peers"))

import score  # noqa: E402  (benchmarks/peers/score.py)

from faceflow.eval import tasks  # noqa: E402

SUBDIR = score.SUBDIR
UTK_TEST = REPO / "training" / "splits" / "utkface_test.txt"
"""The held-out part of the committed UTKFace split: trained heads are scored on it only."""

# protocol -> [(row label, runner)]; each runner gets (root, use_cache). The first row of each
# protocol is faceflow's default, as ``faceflow eval <protocol>`` runs it with no options.
Runner = Callable[[Path, bool], dict[str, Any]]
CONFIGS: dict[str, list[tuple[str, Runner]]] = {
    "lfw": [
        ("faceflow fused+flip (default, accurate)", lambda r, c: tasks.eval_lfw(r, model="fused", use_cache=c)),
        ("faceflow fast+fused_int8+flip (accurate, int8)",
         lambda r, c: tasks.eval_lfw(r, model="fused_int8", detector="fast", use_cache=c)),
        ("faceflow fast+sface_int8 (fast)",
         lambda r, c: tasks.eval_lfw(r, model="sface_int8", detector="fast", flip=False, use_cache=c)),
        ("faceflow sface", lambda r, c: tasks.eval_lfw(r, model="sface", use_cache=c)),
        ("faceflow dlib", lambda r, c: tasks.eval_lfw(r, model="dlib", use_cache=c)),
    ],
    "wider": [
        ("faceflow yunet (default)", lambda r, c: tasks.eval_wider(r, detector="yunet", use_cache=c)),
        ("faceflow accurate", lambda r, c: tasks.eval_wider(r, detector="accurate", use_cache=c)),
        ("faceflow fast", lambda r, c: tasks.eval_wider(r, detector="fast", use_cache=c)),
        ("faceflow centerface", lambda r, c: tasks.eval_wider(r, detector="centerface", use_cache=c)),
        ("faceflow retinaface", lambda r, c: tasks.eval_wider(r, detector="retinaface", use_cache=c)),
    ],
    "300w": [
        ("faceflow yunet+refined (default)", lambda r, c: tasks.eval_300w(r, landmarks="refined", use_cache=c)),
        ("faceflow yunet+fused", lambda r, c: tasks.eval_300w(r, landmarks="fused", use_cache=c)),
        ("faceflow yunet+landmarker", lambda r, c: tasks.eval_300w(r, landmarks="landmarker", use_cache=c)),
        ("faceflow yunet+pfld", lambda r, c: tasks.eval_300w(r, landmarks="pfld", use_cache=c)),
        ("faceflow yunet+mesh", lambda r, c: tasks.eval_300w(r, landmarks="mesh", use_cache=c)),
        ("faceflow yunet+faceapi", lambda r, c: tasks.eval_300w(r, landmarks="faceapi", use_cache=c)),
        ("faceflow yunet+dlib", lambda r, c: tasks.eval_300w(r, landmarks="dlib", use_cache=c)),
    ],
    "utkface": [
        ("faceflow cydral (default)", lambda r, c: tasks.eval_utkface(r, use_cache=c)),
    ],
    "utkface_test": [
        ("faceflow cydral (default)", lambda r, c: tasks.eval_utkface(r, split=UTK_TEST, use_cache=c)),
        ("faceflow heads", lambda r, c: tasks.eval_utkface(r, age_gender="heads", split=UTK_TEST, use_cache=c)),
    ],
}
DATA = {**SUBDIR, "utkface_test": SUBDIR["utkface"]}
PEER_TASK = {"utkface_test": "utkface"}
"""Protocols scored from another task's peer outputs (here: the same UTKFace run, on the test part)."""
SPLIT = {"utkface_test": UTK_TEST}
QUICK_PEER_JOBS = ["opencv_wider", "deface_wider", "mediapipe_wider", "agegender_utkface", "face_recognition_300w"]
"""Every peer job but LFW's (which takes about an hour on one core): minutes in all."""

NOTES: dict[str, str] = {
    "wider": "The even/odd columns are the AP on each half of the events, the halves that "
             "`training/select_accurate.py` chooses on and reports on. The `accurate` row is the configuration "
             "that rule chose on all 305 images, so none of its columns is held out: the held-out figures of "
             "the rule (each half chosen on, the other scored, both ways) are in `select_accurate.json`.",
    "lfw": "`fused`'s and `fused_int8`'s fusion weights are refitted on the nine training folds of each fold.",
    "300w": "The permissive 68-point sources are regressions fitted without 300-W data; `dlib` is dlib's own "
            "predictor (trained on iBUG 300-W, non-commercial).",
}
"""Read-me lines printed under a protocol's heading."""

# What each protocol's table shows: (column, key in faceflow's result, key in the peers' figures, scale).
COLUMNS: dict[str, list[tuple[str, str, str, float]]] = {
    "lfw": [("acc %", "accuracy_mean", "acc %", 100), ("std %", "accuracy_std", "acc std %", 100),
            ("TAR@FAR=1e-3 %", "tar_at_far_1e-3", "TAR@FAR=1e-3 %", 100), ("AUC", "roc_auc", "AUC", 1),
            ("no face", "detection_failures", "no face", 1), ("img/s", "images_per_second", "img/s", 1)],
    "wider": [("AP easy", "easy", "AP easy", 1), ("AP medium", "medium", "AP medium", 1),
              ("AP hard", "hard", "AP hard", 1),
              *((f"{h} {s}", f"{h}_{s}", f"{h}_{s}", 1) for h in ("even", "odd") for s in ("easy", "medium", "hard")),
              ("median ms", "median_ms", "median ms", 1)],
    "300w": [("NME mean %", "nme_mean", "NME mean %", 100), ("NME median %", "nme_median", "NME median %", 100),
             ("failure @0.1 %", "failure_rate", "failure @0.1 %", 100), ("AUC@0.1", "auc_0.1", "AUC@0.1", 1),
             ("missed", "missed", "no face", 1), ("median ms", "median_ms", "median ms", 1)],
    "utkface": [("age MAE", "age_mae", "age MAE", 1), ("CS(5) %", "cs5", "CS(5) %", 100),
                ("gender %", "gender_accuracy", "gender %", 100), ("n", "n", "n", 1),
                ("median ms", "median_ms", "median ms", 1)],
}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    p.add_argument("--peers", type=Path, default=HERE / "results" / "peers")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--only", default=",".join(CONFIGS))
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for faceflow's models (default 1, as the peers run; 0 = every core)")
    p.add_argument("--run-peers", default="",
                   help="peer jobs to run first (peers/run_all.sh): a comma list, 'quick' (all but LFW) or 'all'")
    args = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    if args.threads:
        import cv2

        os.environ["FACEFLOW_THREADS"] = str(args.threads)
        cv2.setNumThreads(args.threads)
    if args.run_peers:
        jobs = {"all": [], "quick": QUICK_PEER_JOBS}.get(args.run_peers, args.run_peers.split(","))
        subprocess.run(["bash", str(HERE / "peers" / "run_all.sh"), *jobs], check=True,
                       env={**os.environ, "DATASETS": str(args.datasets), "OUT": str(args.peers)})
    wanted = args.only.split(",")
    peers: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for jsonl in sorted(args.peers.glob("*_*.jsonl")):
        try:
            header, figs = score.score_file(jsonl, args.datasets)
        except (KeyError, FileNotFoundError) as exc:
            print(f"skipped peer file {jsonl.name}: {exc}", file=sys.stderr)
            continue
        figs["wall_s"] = header["wall_s"]
        peers.setdefault(header["task"], []).append((f"{header['peer']} (peer)", figs))
        for protocol, task in PEER_TASK.items():
            if task == header["task"]:
                _, recs = score.read_jsonl(jsonl)
                figs = score.score_utkface(recs, args.datasets / DATA[protocol], SPLIT[protocol])
                figs["wall_s"] = header["wall_s"]
                peers.setdefault(protocol, []).append((f"{header['peer']} (peer)", figs))
    ran_now = sorted(QUICK_PEER_JOBS if args.run_peers == "quick" else [] if not args.run_peers else
                     args.run_peers.split(",") if args.run_peers != "all" else ["all"])
    md = ["# faceflow and its peers, same data, same scoring", "",
          f"`benchmarks/compare.py {' '.join(sys.argv[1:])}`, started {started}, {os.cpu_count()} cores; faceflow "
          f"with {args.threads or 'all'} thread(s) per model, the peers with one "
          f"(nice {os.environ.get('PEER_NICE', '10')}). faceflow rows are measured "
          "in this run (wall s includes loading the models; with the per-image cache a rerun is fast and "
          "keeps the first run's times). Peer rows are scored now from `results/peers/`; peer jobs run in "
          f"this run: {', '.join(ran_now) or 'none'} (the others' outputs are from an earlier run; their wall "
          "s is that run's). Speed columns depend on the machine's load.", ""]
    everything: dict[str, Any] = {}
    for protocol in wanted:
        root = args.datasets / DATA[protocol]
        cols = COLUMNS[PEER_TASK.get(protocol, protocol)]
        rows = []
        for label, run in CONFIGS[protocol]:
            t0 = time.perf_counter()
            result = run(root, not args.no_cache)
            wall = time.perf_counter() - t0
            everything[f"{protocol}/{label}"] = {k: v for k, v in result.items() if k not in ("curves", "errors")}
            rows.append([label] + [_fmt(None if result.get(k) is None else result[k] * s if isinstance(
                result[k], float) else result[k]) for _, k, _, s in cols] + [f"{wall:.0f}"])
            print(f"{protocol}: {label} done in {wall:.0f} s", file=sys.stderr)
        for label, figs in peers.get(protocol, []):
            everything[f"{protocol}/{label}"] = figs
            rows.append([label] + [_fmt(figs.get(k)) for _, _, k, _ in cols] + [_fmt(figs.get("wall_s"))])
        title = f"{protocol} ({SPLIT[protocol].relative_to(REPO)})" if protocol in SPLIT else protocol
        md += [f"## {title}", ""] + ([NOTES[protocol], ""] if protocol in NOTES else [])
        md += ["| configuration | " + " | ".join(c for c, *_ in cols) + " | wall s |",
               "|---" * (len(cols) + 2) + "|"]
        md += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "RESULTS.md").write_text("\n".join(md) + "\n")
    (args.out / "RESULTS.json").write_text(json.dumps(everything, indent=1, default=str) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
