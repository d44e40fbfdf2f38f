"""End to end through the CLI: enrol 1,000 LFW faces, then identify 1,000 probes; wall times.

    nice .venv/bin/python benchmarks/bench_enrol_identify.py --root ../shared/datasets/lfw

The gallery is the first image of the first N people (by name) with two or more images, the probes
their second images. Both steps run as real CLI processes (``faceflow enroll GALLERY - DIR`` names
each subject after its folder; ``faceflow identify``), on a fresh SQLite store, so the times include
start-up and model loading. Also reported: how many probes came back as the right person.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _emit import emit_json  # benchmarks/_emit.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="LFW folder (<Person>/<image>.jpg)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--cli", default=f"{sys.executable} -m faceflow.gallery_cli",
                    help="command that runs the gallery CLI (e.g. 'faceflow')")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    people = sorted(d for d in args.root.iterdir() if d.is_dir())
    chosen = [sorted(d.glob("*.jpg")) for d in people]
    chosen = [imgs for imgs in chosen if len(imgs) >= 2][: args.n]
    with tempfile.TemporaryDirectory(prefix="faceflow-e2e-") as tmp:
        work = Path(tmp)
        for imgs in chosen:  # <person>/<image> links, so that '-' names each subject after its folder
            (work / "gallery" / imgs[0].parent.name).mkdir(parents=True)
            (work / "gallery" / imgs[0].parent.name / imgs[0].name).symlink_to(imgs[0].resolve())
            (work / "probes").mkdir(exist_ok=True)
            (work / "probes" / imgs[1].name).symlink_to(imgs[1].resolve())
        env = dict(os.environ, FACEFLOW_GALLERY=str(work / "galleries.db"))
        cli = shlex.split(args.cli)
        figures: dict[str, object] = {"gallery_photos": len(chosen), "probe_photos": len(chosen)}
        for step, extra in (("enroll", ["bench", "-", str(work / "gallery")]),
                            ("identify", ["bench", str(work / "probes"), "--out", str(work / "ids.jsonl")])):
            t0 = time.perf_counter()
            done = subprocess.run([*cli, step, *extra], env=env, capture_output=True, text=True)
            figures[f"{step}_wall_s"] = round(time.perf_counter() - t0, 2)
            figures[f"{step}_exit_code"] = done.returncode
            print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", file=sys.stderr)
        rows = [json.loads(line) for line in (work / "ids.jsonl").read_text().splitlines()]
        right = 0
        for r in rows:
            person = Path(r["path"]).name.rsplit("_", 1)[0]
            faces = sorted(r["faces"], key=lambda f: -(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))
            right += bool(faces) and faces[0].get("subject") == person
        figures["probes_identified_correctly"] = right
        figures["enrol_photos_per_s"] = round(len(chosen) / float(figures["enroll_wall_s"]), 1)  # type: ignore[arg-type]
        figures["identify_photos_per_s"] = round(len(chosen) / float(figures["identify_wall_s"]), 1)  # type: ignore[arg-type]
    emit_json(figures, args.json)


if __name__ == "__main__":
    main()
