"""Per-image result cache for evaluation runs, so a rerun after a scoring change is fast.

An entry is keyed by a model/settings string (chosen by the caller, e.g. ``"yunet-2023mar s=0.05"``)
and the sha256 of the image file. It lives under ``$FACEFLOW_HOME/eval-cache/<hash of key>/`` as
``<sha256>.json`` (the seconds the computation took and the value or its kind) and, for arrays,
``<sha256>.npy``. Values are ``None``, numpy arrays, or JSON-able data (tuples come back as lists).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from faceflow.models.store import faceflow_home, sha256_file

T = TypeVar("T")


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
        """The cached ``(value, seconds)`` for ``path``, or ``compute()``'s, stored for next time."""
        hit, value, seconds = self.get(path)
        if hit:
            return value, seconds
        value, seconds = compute()
        self.put(path, value, seconds)
        return value, seconds
