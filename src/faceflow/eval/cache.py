"""Per-image result cache for evaluation runs, so a rerun of a protocol that changed nothing is fast.

An entry is keyed by a predictor key (:func:`predictor_key`: everything that decides what the
predictor outputs) and the sha256 of the image file. It lives under
``$FACEFLOW_HOME/eval-cache/<hash of key>/`` as ``<sha256>.json`` (the seconds the computation took and
the value or its kind) and, for arrays, ``<sha256>.npy``. Values are ``None``, numpy arrays, or
JSON-able data (tuples come back as lists).

What the key covers, so that a cached result is never one that today's code would not give:

* the protocol, the models' weight files (their registered sha256) and the run's settings;
* :data:`PREDICTOR_VERSION`, bumped by hand with any change meant to alter outputs;
* the source of every model-facing module: all of the ``faceflow`` package (and its shipped data,
  e.g. the trained ``mesh_to_68`` regression) except :data:`EDGE_ONLY`. Hashing everything by default
  means a new module, or a helper moved between modules, can never slip out of the key; the cost is
  that a change in an evaluation module's scoring code re-runs the models too;
* the versions of the runtime libraries that compute the outputs (:data:`RUNTIME_LIBRARIES`): the
  same model file can give other numbers under another OpenCV, ONNX Runtime, dlib, LiteRT or numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from faceflow.models.store import faceflow_home, sha256_file

T = TypeVar("T")

PREDICTOR_VERSION = 1
"""Version of what faceflow's predictors output, part of every eval-cache key. Bump it by hand in the
commit that changes an output on purpose (a fix, a new default, a retrained model) so that no cached
result of the old behaviour is reused, even where the source hash alone would not show it (e.g. a
change in a dependency pinned outside the package)."""

EDGE_ONLY = frozenset({"cli.py", "cli_base.py", "gallery_cli.py", "draw.py", "bench.py", "outputs.py",
                       "eval/report.py"})
"""Package modules left out of the source hash, relative to the package: they only parse arguments,
print, draw, time or write reports around results, and never touch a model's input or output
(``gallery_cli`` takes its LFW embedder from :mod:`faceflow.eval.tasks`). Everything else is hashed."""

RUNTIME_LIBRARIES: dict[str, tuple[str, ...]] = {
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "dlib": ("dlib-bin", "dlib"),
    "litert": ("ai-edge-litert",),
    "numpy": ("numpy",),
}
"""The libraries that compute model outputs -> the distributions that may provide each (any installed)."""


def runtime_versions() -> dict[str, str]:
    """``{library: "distribution==version", ...}`` for :data:`RUNTIME_LIBRARIES` (``"absent"`` when none is
    installed), read from the installed distributions' metadata without importing them."""
    out: dict[str, str] = {}
    for lib, dists in RUNTIME_LIBRARIES.items():
        found = []
        for dist in dists:
            try:
                found.append(f"{dist}=={metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                continue
        out[lib] = "+".join(found) or "absent"
    return out


def source_digest(package: Path | str | None = None) -> str:
    """sha256 (16 hex digits) of the package's source and data files except :data:`EDGE_ONLY` (and
    byte-code), each named by its path in the package; ``package`` defaults to the installed
    ``faceflow`` folder. Read afresh at each call (about 1.5 MB), so an edit shows at once."""
    root = Path(package) if package is not None else Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or rel in EDGE_ONLY:
            continue
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def predictor_key(protocol: str, models: Mapping[str, str], settings: str, *,
                  runtime: Mapping[str, str] | None = None, source: str | None = None) -> str:
    """The eval-cache key of one predictor: protocol, ``models`` (name -> weights sha256), settings,
    :data:`PREDICTOR_VERSION`, faceflow's version, :func:`source_digest` and :func:`runtime_versions`
    (``runtime``/``source`` override the last two, e.g. to key results made elsewhere)."""
    from faceflow import __version__

    runtime = runtime_versions() if runtime is None else runtime
    return "|".join([
        protocol,
        ",".join(f"{name}={sha[:12]}" for name, sha in models.items()),
        settings,
        f"predictor={PREDICTOR_VERSION}",
        f"faceflow={__version__}",
        f"source={source_digest() if source is None else source}",
        ",".join(f"{lib}={v}" for lib, v in sorted(runtime.items())),
    ])


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """Call ``fn(*args)`` and return its result and the seconds the call took (arguments not timed)."""
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


class ResultCache:
    """Results of one model/settings string, one entry per image file content."""

    def __init__(self, key: str, root: Path | str | None = None) -> None:
        self.key = key
        base = Path(root) if root is not None else faceflow_home() / "eval-cache"
        self.dir = base / hashlib.sha256(key.encode()).hexdigest()[:16]
        self._digests: dict[Path, str] = {}

    def _digest(self, path: Path) -> str:
        path = Path(path).resolve()
        if path not in self._digests:
            self._digests[path] = sha256_file(path)
        return self._digests[path]

    def get(self, path: Path) -> tuple[bool, Any, float]:
        """``(hit, value, seconds)`` for the file at ``path``; ``(False, None, 0.0)`` when absent."""
        digest = self._digest(path)
        meta_path = self.dir / f"{digest}.json"
        try:
            meta = json.loads(meta_path.read_text())
            if meta["kind"] == "array":
                value = np.load(self.dir / f"{digest}.npy", allow_pickle=False)
            else:
                value = meta.get("value")
        except (OSError, ValueError, KeyError):
            return False, None, 0.0
        return True, value, float(meta["seconds"])

    def put(self, path: Path, value: Any, seconds: float) -> None:
        """Store ``value`` (``None``, an array, or JSON-able data) for the file at ``path``."""
        digest = self._digest(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.txt"
        if not key_file.exists():
            key_file.write_text(self.key + "\n")
        meta: dict[str, Any] = {"seconds": float(seconds)}
        if value is None:
            meta["kind"] = "none"
        elif isinstance(value, np.ndarray):
            meta["kind"] = "array"
            tmp = self.dir / f"{digest}.{os.getpid()}.tmp.npy"
            np.save(tmp, value, allow_pickle=False)
            os.replace(tmp, self.dir / f"{digest}.npy")
        else:
            meta["kind"] = "json"
            meta["value"] = value
        tmp = self.dir / f"{digest}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.dir / f"{digest}.json")  # written last: its presence marks a complete entry

    def call(self, path: Path, compute: Callable[[], tuple[Any, float]]) -> tuple[Any, float]:
        """The cached ``(value, seconds)`` for ``path``, or ``compute()``'s, stored for next time.

        A file that cannot be hashed (missing, a folder, unreadable) is not cached: ``compute()`` reads
        it and raises the typed error that names the problem, which the batch records for that item."""
        try:
            self._digest(path)
        except OSError:
            return compute()
        hit, value, seconds = self.get(path)
        if hit:
            return value, seconds
        value, seconds = compute()
        self.put(path, value, seconds)
        return value, seconds
