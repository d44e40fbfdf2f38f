"""Frames per second of ``faceflow analyze`` on the sample videos, at their own size and at 1280x720.

For each clip in ``shared/datasets/samples/videos``: runs ``faceflow analyze CLIP --out DIR`` (default
detector and stages, annotated video written, as a user runs it) and reads the frames/s it prints
for the video loop (decode + analyse + track + annotate + encode; model loading excluded) and the
number of tracks from ``frames.jsonl``; then the same on a 1280x720 copy of the clip made with the
``ffmpeg`` binary in a temporary folder (needs ``ffmpeg`` on PATH; ``apt-get install ffmpeg``).
Usage:

    .venv/bin/python benchmarks/bench_video.py [--json benchmarks/results/video.json]
        [--sheet CLIP --sheet-every 10 --sheet-out sheet.png]

``--sheet`` also writes a contact sheet of the annotated frames of one clip (every Nth frame,
numbered), for counting identity switches by eye.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _emit import emit_json

from faceflow.video import iter_frames, probe

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared/datasets/samples/videos"
SUMMARY = re.compile(r"(\d+) frames in ([\d.]+) s \(([\d.]+) frames/s\), (\d+) tracks, (\d+) errors")


def analyze(clip: Path, out: Path) -> dict[str, object]:
    """Run the CLI on one clip; frames/s of its video loop, tracks, wall time of the whole command."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "faceflow.cli", "analyze", str(clip), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    match = SUMMARY.search(" ".join(proc.stderr.split()))
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"faceflow analyze {clip} failed ({proc.returncode}):\n{proc.stderr}")
    frames, seconds, fps, tracks, errors = match.groups()
    lines = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    ids = {f["track_id"] for x in lines for f in x["faces"] if "track_id" in f}
    faces = sum(len(x["faces"]) for x in lines)
    info = probe(clip)
    return {"size": f"{info.width}x{info.height}", "frames": int(frames), "loop_seconds": float(seconds),
            "frames_per_second": float(fps), "command_wall_seconds": round(wall, 1), "tracks": int(tracks),
            "track_ids_in_jsonl": len(ids), "faces": faces, "errors": int(errors)}


def upscale(clip: Path, target: Path) -> None:
    """A 1280x720 copy of ``clip`` (H.264, audio copied) made with the ffmpeg binary."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-vf", "scale=1280:720", "-c:v", "libx264",
                    "-crf", "18", "-preset", "veryfast", "-c:a", "copy", str(target)], check=True)


def contact_sheet(video: Path, every: int, out: Path, columns: int = 4, tile_width: int = 426) -> None:
    """Every ``every``-th frame of ``video``, numbered, tiled ``columns`` wide into one PNG."""
    tiles = []
    for frame in iter_frames(video, every=every):
        h, w = frame.image.shape[:2]
        tile = cv2.resize(frame.image, (tile_width, round(h * tile_width / w)), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, str(frame.index), (5, tile.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 0, 0), 2)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    sheet = np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--videos", type=Path, default=VIDEOS)
    ap.add_argument("--sheet", help="clip name whose annotated frames go on a contact sheet")
    ap.add_argument("--sheet-every", type=int, default=10)
    ap.add_argument("--sheet-out", type=Path, default=Path("video_sheet.png"))
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg not found: the 1280x720 copies need it (apt-get install ffmpeg)")
    clips = sorted(args.videos.glob("*.mp4"))
    if not clips:
        raise SystemExit(f"no clips in {args.videos}")
    results: dict[str, object] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            native = analyze(clip, Path(tmp) / clip.stem / "native")
            big = Path(tmp) / f"{clip.stem}_1280x720.mp4"
            upscale(clip, big)
            hd = analyze(big, Path(tmp) / clip.stem / "hd")
            results[clip.name] = {"native": native, "1280x720": hd}
            print(f"{clip.name}: {native['size']} {native['frames_per_second']} frames/s, "
                  f"1280x720 {hd['frames_per_second']} frames/s, tracks {native['tracks']} / {hd['tracks']}",
                  file=sys.stderr)
            if args.sheet == clip.name:
                contact_sheet(Path(tmp) / clip.stem / "native" / "annotated" / clip.name, args.sheet_every,
                              args.sheet_out)
                print(f"contact sheet: {args.sheet_out}", file=sys.stderr)
    emit_json({
        "what": "faceflow analyze CLIP --out DIR (default detector and stages, annotated video written): "
                "frames/s of the video loop (decode, analyse, track, annotate, encode), model loading excluded",
        "upscaled": "1280x720 copies made with the ffmpeg binary (scale filter, libx264 crf 18) in a temp dir",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "FACEFLOW_THREADS": os.environ.get("FACEFLOW_THREADS"),
                    "load_average_1_5_15_min_before": [round(x, 2) for x in load_before],
                    "load_average_1_5_15_min_after": [round(x, 2) for x in os.getloadavg()]},
        "clips": results,
    }, args.json)


if __name__ == "__main__":
    main()
