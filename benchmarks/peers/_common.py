"""Shared plumbing for the peer runners: arguments, item lists, timing and the JSONL writer.

Imported by every ``<peer>_run.py`` inside that peer's own venv, so it depends only on the
standard library and numpy. Call :func:`preset_threads` before importing numpy or the peer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def preset_threads(default: int = 1) -> int:
    """Read ``--threads`` from argv early and export the usual thread-count variables."""
    n = default
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            n = int(argv[i + 1])
        elif arg.startswith("--threads="):
            n = int(arg.split("=", 1)[1])
    for var in _THREAD_VARS:
        os.environ.setdefault(var, str(n))
    return n


def make_parser(peer: str, tasks: tuple[str, ...]) -> argparse.ArgumentParser:
    """Return the argument parser every runner shares."""
    p = argparse.ArgumentParser(description=f"Run {peer} on a faceflow benchmark and write raw JSONL.")
    p.add_argument("--task", required=True, choices=tasks)
    p.add_argument("--root", required=True, type=Path, help="dataset folder (see benchmarks/README.md)")
    p.add_argument("--out", required=True, type=Path, help="output .jsonl")
    p.add_argument("--limit", type=int, default=0, help="only the first N items (0 = all)")
    p.add_argument("--threads", type=int, default=1)
    return p


def list_items(task: str, root: Path, limit: int = 0) -> list[str]:
    """Return the sorted relative image paths of a task's dataset."""
    if task == "lfw":
        paths = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    elif task == "wider":
        base = root / "WIDER_val" / "images"
        paths = sorted(p.relative_to(base).as_posix() for p in base.glob("*/*.jpg"))
    elif task == "300w":
        paths = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTS and p.with_suffix(".pts").is_file()
        )
    elif task == "utkface":
        paths = sorted(p.relative_to(root).as_posix() for p in root.glob("*.jpg"))
    else:
        raise ValueError(task)
    if not paths:
        raise SystemExit(f"no images for task {task} under {root}")
    return paths[:limit] if limit > 0 else paths


def image_path(task: str, root: Path, rel: str) -> Path:
    """Return the absolute path of an item."""
    return root / "WIDER_val" / "images" / rel if task == "wider" else root / rel


def read_pts(path: Path) -> list[list[float]]:
    """Read a 300-W ``.pts`` file into a list of [x, y] points."""
    lines = path.read_text().splitlines()
    start = lines.index("{") + 1
    end = lines.index("}")
    return [[float(v) for v in ln.split()[:2]] for ln in lines[start:end]]


def nearest_index(centres: list[tuple[float, float]], target: tuple[float, float]) -> int:
    """Return the index of the centre nearest ``target`` (first one on ties)."""
    d = [(cx - target[0]) ** 2 + (cy - target[1]) ** 2 for cx, cy in centres]
    return min(range(len(d)), key=d.__getitem__)


def versions(*dists: str) -> dict[str, str]:
    """Return installed versions of the named distributions (missing ones are skipped)."""
    out = {}
    for d in dists:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[d] = metadata.version(d)
    return out


def thread_count() -> int:
    """Return this process's current number of threads."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


class Writer:
    """Collect per-item records in a temporary file, then write header + records atomically."""

    def __init__(self, out: Path, peer: str, task: str, settings: dict[str, Any], dists: tuple[str, ...]):
        self.out = out
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = out.with_name(out.name + ".part")
        self.fh = self.tmp.open("w")
        self.header: dict[str, Any] = {
            "header": True,
            "peer": peer,
            "task": task,
            "settings": settings,
            "versions": {"python": platform.python_version(), **versions(*dists)},
            "argv": sys.argv[1:],
        }
        self.n = 0
        self.max_threads = thread_count()
        self.t0 = time.perf_counter()

    def write(self, rec: dict[str, Any]) -> None:
        """Append one item record."""
        self.fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.n += 1
        if self.n % 50 == 1:
            self.max_threads = max(self.max_threads, thread_count())

    def close(self, **extra: Any) -> None:
        """Finish: prepend the header (with wall time, peak RSS, threads) and move into place."""
        self.fh.close()
        self.max_threads = max(self.max_threads, thread_count())
        self.header.update(
            n=self.n,
            wall_s=round(time.perf_counter() - self.t0, 2),
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            threads_max=self.max_threads,
            **extra,
        )
        with self.out.open("w") as fh:
            fh.write(json.dumps(self.header, separators=(",", ":")) + "\n")
            with self.tmp.open() as src:
                for line in src:
                    fh.write(line)
        self.tmp.unlink()


def ms_since(t: float) -> float:
    """Milliseconds since ``t`` (a ``time.perf_counter()`` value), rounded to 0.01."""
    return round((time.perf_counter() - t) * 1000, 2)


def progress(i: int, n: int, every: int = 200) -> None:
    """Print a progress line to stderr every ``every`` items."""
    if i % every == 0 or i == n:
        print(f"  {i}/{n}", file=sys.stderr, flush=True)
