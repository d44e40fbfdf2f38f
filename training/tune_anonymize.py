"""Choose the photo anonymiser's threshold and crowd rule on the even WIDER events, beside deface.

Why: :data:`faceflow.anonymize.IMAGE_THRESHOLD`, :data:`~faceflow.anonymize.CROWD_FACTOR` and
:data:`~faceflow.anonymize.CROWD_RADIUS` were chosen by this rule; the script makes the choice
reproducible from the repository, and never looks at the odd events on which the figures are reported.

* faceflow: photo anonymisation's detections on the even events (``half="tune"``), from the eval's
  cache (:func:`faceflow.eval.tasks.anonymize_wider_predictions`, the detections behind
  ``faceflow eval anonymize --half tune``; computed once where missing). No odd event's image is
  opened; their ground truth and deface's rows for them are dropped on reading.
* deface: its boxes from ``--deface``, the JSONL of ``benchmarks/peers/deface_run.py`` at threshold
  0.05 as ``benchmarks/bench_anonymize.py`` runs it, scored as deface covers
  (``bench_anonymize.score_deface``) at :data:`DEFACE_SWEEP`.
* Grid: each threshold of :data:`THRESHOLDS`, crowd floor of :data:`FLOORS` (a score; the rule's
  factor is floor / threshold) and radius of :data:`RADII`, with
  :data:`~faceflow.anonymize.CROWD_NEIGHBOURS` neighbours, scored by
  :func:`faceflow.eval.anonymize.evaluate_anonymize` with that :class:`~faceflow.anonymize.CrowdRule`.
* Rule: among the settings whose needless share is under :data:`MAX_NEEDLESS`, the one with the
  largest smallest lead (over easy, medium and hard, in points of faces covered) over deface at the
  lowest threshold whose needless share is no larger (``bench_anonymize.matched_needless``).

    benchmarks/.venvs/deface/bin/python benchmarks/peers/deface_run.py --task wider \\
        --root ../shared/datasets/wider --out deface_wider.jsonl --thresh 0.05
    PYTHONPATH=src .venv/bin/python training/tune_anonymize.py --root ../shared/datasets/wider \\
        --deface deface_wider.jsonl

Prints the grid and the choice, and writes ``benchmarks/results/tune_anonymize.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.08, 0.1)
FLOORS = (0.03, 0.04)
"""Crowd floors: the lowest score of a weak candidate the crowd rule may cover."""
RADII = (3.0, 4.0)
MAX_NEEDLESS = 0.10
DEFACE_SWEEP = tuple(round(0.05 + 0.005 * i, 3) for i in range(30))
"""deface's thresholds, 0.05 (its JSONL's floor) to 0.195: finer than the eval's sweep, so that the
matched deface threshold's needless share lies close to each setting's. The choice depends on it: with
the eval's sweep (0.05, 0.06, 0.07, ...) threshold 0.1, floor 0.04, radius 3 (9.08 % needless) would be
matched with deface at 0.07 instead of 0.065 and lead (1.24 points against 1.02)."""
LISTS = ("easy", "medium", "hard")


def lead_over(row: dict[str, Any], deface: dict[str, Any] | None) -> dict[str, float] | None:
    """Points of faces covered above deface on each list (``None`` without a matched deface row)."""
    if deface is None:
        return None
    return {s: 100 * (row[s]["covered"] - deface[s]["covered"]) for s in LISTS}


def main() -> None:
    data = Path(os.environ.get("FACEFLOW_DATASETS", ROOT.parent / "shared" / "datasets"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=data / "wider", help="WIDER subset (faceflow.eval.wider layout)")
    p.add_argument("--deface", type=Path, required=True, help="deface's WIDER JSONL (peers/deface_run.py)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "tune_anonymize.json")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_anonymize import matched_needless, read_deface, score_deface

    from faceflow.anonymize import CROWD_FACTOR, CROWD_NEIGHBOURS, CROWD_RADIUS, IMAGE_THRESHOLD, CrowdRule
    from faceflow.eval.anonymize import evaluate_anonymize
    from faceflow.eval.tasks import ANONYMIZE_FLOOR, anonymize_wider_predictions

    if min(FLOORS) < ANONYMIZE_FLOOR:
        raise SystemExit(f"the eval's detections stop at {ANONYMIZE_FLOOR}, under the lowest crowd floor")
    run = anonymize_wider_predictions(args.root, half="tune", progress=not args.no_progress)
    if run.errors:
        raise SystemExit(f"{len(run.errors)} images failed: {run.errors[:3]}")
    keys = {im.key for im in run.gt}
    deface = read_deface(args.deface, keys)
    missing = keys - deface.keys()
    if missing:
        raise SystemExit(f"{args.deface} lacks {len(missing)} of the {len(keys)} even-event images")
    sweep = [score_deface(deface, run.sizes, run.gt, t) for t in DEFACE_SWEEP]

    rows: list[dict[str, Any]] = []
    for t, floor, radius in itertools.product(THRESHOLDS, FLOORS, RADII):
        rule = CrowdRule(factor=round(floor / t, 6), radius=radius, neighbours=CROWD_NEIGHBOURS)
        r = evaluate_anonymize(run.preds, run.sizes, run.gt, t, crowd=rule)
        m = matched_needless(sweep, r["needless"])
        lead = lead_over(r, m)
        rows.append({"threshold": t, "floor": floor, "radius": radius, "result": r,
                     "deface_threshold": m["threshold"] if m else None, "lead": lead,
                     "smallest_lead": min(lead.values()) if lead else None,
                     "eligible": r["needless"] < MAX_NEEDLESS and lead is not None})
    eligible = [r for r in rows if r["eligible"]]
    chosen = max(eligible, key=lambda r: r["smallest_lead"]) if eligible else None
    shipped = {"threshold": IMAGE_THRESHOLD, "floor": round(CROWD_FACTOR * IMAGE_THRESHOLD, 6), "radius": CROWD_RADIUS}
    pick = {k: chosen[k] for k in shipped} if chosen else None

    head = (f"{'thr':>5} {'floor':>5} {'R':>3} | {'easy':>6} {'medium':>6} {'hard':>6} {'needless':>8} | "
            f"{'deface@':>7} {'lead e/m/h':>17} {'min':>5}")
    print(f"{len(run.gt)} images of the even events; {CROWD_NEIGHBOURS} neighbours; "
          f"needless share under {MAX_NEEDLESS:.0%}")
    print(head)
    print("-" * len(head))
    for r in rows:
        res, lead = r["result"], r["lead"]
        leads = "/".join(f"{lead[s]:.2f}" for s in LISTS) if lead else "-"
        mark = " <- chosen" if r is chosen else "" if r["eligible"] else " (over the needless limit)"
        print(f"{r['threshold']:5.2f} {r['floor']:5.2f} {r['radius']:3.0f} | "
              + " ".join(f"{100 * res[s]['covered']:6.2f}" for s in LISTS)
              + f" {100 * res['needless']:7.2f}% | {r['deface_threshold'] or '-':>7} {leads:>17} "
              + (f"{r['smallest_lead']:5.2f}" if r["smallest_lead"] is not None else "    -") + mark)
    same = pick == shipped
    print(f"chosen: {pick}; shipped (faceflow.anonymize): {shipped}; reproduced: {'yes' if same else 'NO'}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    out = {"half": "tune", "images": len(run.gt), "neighbours": CROWD_NEIGHBOURS, "max_needless": MAX_NEEDLESS,
           "grid": {"thresholds": THRESHOLDS, "floors": FLOORS, "radii": RADII}, "rows": rows,
           "deface_sweep": sweep, "chosen": pick, "shipped": shipped, "reproduced": same}
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
