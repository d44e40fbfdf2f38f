"""What the protocol runners share: progress display, per-item error capture, timing summaries."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.progress import track as _rich_track

from faceflow.errors import FaceflowError
from faceflow.eval.cache import ResultCache, timed
from faceflow.io import load_image

T = TypeVar("T")


def track(items: Sequence[T], label: str, enabled: bool) -> Iterable[T]:
    """Iterate ``items`` with a transient progress bar on stderr when ``enabled``."""
    return _rich_track(
        items, description=label, total=len(items), console=Console(stderr=True),
        disable=not enabled, transient=True,
    )


def run_item(
    path: Path,
    fn: Callable[..., Any],
    cache: ResultCache | None,
    errors: list[dict[str, str]],
    *,
    image: bool = False,
    extra: tuple[Any, ...] = (),
) -> tuple[Any, float | None]:
    """``fn(path or its decoded image, *extra)`` through ``cache`` -> ``(value, seconds)``.

    Only the call is timed (not the decoding), and on a cache hit the image is not even read.
    A :class:`FaceflowError` is recorded in ``errors`` next to the path and gives ``(None, None)``,
    so that batch runs go on.
    """

    def compute() -> tuple[Any, float]:
        return timed(fn, load_image(path) if image else path, *extra)

    try:
        return cache.call(path, compute) if cache is not None else compute()
    except FaceflowError as exc:
        errors.append({"path": str(path), "error": str(exc)})
        return None, None


def median_ms(seconds: Iterable[float | None]) -> float | None:
    """Median of the timed calls in milliseconds (items that failed are left out)."""
    values = [s for s in seconds if s is not None]
    return float(np.median(values) * 1000.0) if values else None


def maybe(value: Any) -> float | None:
    """``value`` as a plain float, or ``None`` when it is not finite (JSON has no NaN)."""
    return float(value) if np.isfinite(value) else None
