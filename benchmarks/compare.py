"""One table, faceflow's rows beside the peers', for every protocol: ``RESULTS.md`` + ``RESULTS.json``.

Usage (faceflow's venv; the peers' raw outputs come from ``benchmarks/peers/run_all.sh``)::

    .venv/bin/python benchmarks/compare.py [--datasets ../shared/datasets] [--only lfw,wider] [--no-cache]

faceflow's figures come from the same functions ``faceflow eval`` runs (``faceflow.eval.tasks``), with
its default settings for each configuration named below; the peers' from ``peers/score.py`` over
their recorded outputs, scored by the same ``faceflow.eval`` metrics. Per-image results are cached
(``$FACEFLOW_HOME/eval-cache``), so a rerun after a scoring change is quick; ``--no-cache`` re-measures.
"""

from __future__ import annotations

import argparse
import json
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

# protocol -> [(row label, runner)]; each runner gets (root, use_cache).
Runner = Callable[[Path, bool], dict[str, Any]]
CONFIGS: dict[str, list[tuple[str, Runner]]] = {
    "lfw": [
        ("faceflow sface (fast)", lambda r, c: tasks.eval_lfw(r, model="sface", use_cache=c)),
        ("faceflow dlib", lambda r, c: tasks.eval_lfw(r, model="dlib", use_cache=c)),
    ],
    "wider": [
        ("faceflow yunet", lambda r, c: tasks.eval_wider(r, detector="yunet", use_cache=c)),
        ("faceflow centerface", lambda r, c: tasks.eval_wider(r, detector="centerface", use_cache=c)),
    ],
    "300w": [
        ("faceflow yunet+mesh", lambda r, c: tasks.eval_300w(r, landmarks="mesh", use_cache=c)),
        ("faceflow yunet+dlib", lambda r, c: tasks.eval_300w(r, landmarks="dlib", use_cache=c)),
    ],
    "utkface": [
        ("faceflow attributes", lambda r, c: tasks.eval_utkface(r, use_cache=c)),
    ],
}

# What each protocol's table shows: (column, key in faceflow's result, key in the peers' figures, scale).
COLUMNS: dict[str, list[tuple[str, str, str, float]]] = {
    "lfw": [("acc %", "accuracy_mean", "acc %", 100), ("std %", "accuracy_std", "acc std %", 100),
            ("TAR@FAR=1e-3 %", "tar_at_far_1e-3", "TAR@FAR=1e-3 %", 100), ("AUC", "roc_auc", "AUC", 1),
            ("no face", "detection_failures", "no face", 1), ("img/s", "images_per_second", "img/s", 1)],
    "wider": [("AP easy", "easy", "AP easy", 1), ("AP medium", "medium", "AP medium", 1),
              ("AP hard", "hard", "AP hard", 1), ("median ms", "median_ms", "median ms", 1)],
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
    args = p.parse_args()
    wanted = args.only.split(",")
    peers: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for jsonl in sorted(args.peers.glob("*_*.jsonl")):
        try:
            header, figs = score.score_file(jsonl, args.datasets)
        except (KeyError, FileNotFoundError) as exc:
            print(f"skipped peer file {jsonl.name}: {exc}", file=sys.stderr)
            continue
        peers.setdefault(header["task"], []).append((f"{header['peer']} (peer)", figs))
    md = ["# faceflow and its peers, same data, same scoring", ""]
    everything: dict[str, Any] = {}
    for protocol in wanted:
        root = args.datasets / SUBDIR[protocol]
        cols = COLUMNS[protocol]
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
            rows.append([label] + [_fmt(figs.get(k)) for _, _, k, _ in cols] + ["(recorded)"])
        md += [f"## {protocol}", "", "| configuration | " + " | ".join(c for c, *_ in cols) + " | wall s |",
               "|---" * (len(cols) + 2) + "|"]
        md += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "RESULTS.md").write_text("\n".join(md) + "\n")
    (args.out / "RESULTS.json").write_text(json.dumps(everything, indent=1, default=str) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
