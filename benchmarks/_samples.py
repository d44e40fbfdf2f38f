"""Images shared by the per-face timing scripts: a spread of a folder's images, with their faces found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceflow import Analyzer, load_image


def faces_in_spread(analyzer: Analyzer, root: Path, images: int) -> list[tuple[Any, list[Any]]]:
    """``(image, faces)`` for up to ``images`` JPEGs taken at even steps through ``root``'s sorted tree
    (so that one person's many photos do not dominate), analysed by ``analyzer``; faceless ones dropped."""
    every = sorted(root.rglob("*.jpg"))
    items = []
    for path in every[:: max(1, len(every) // images)][:images]:
        image = load_image(path)
        faces = analyzer.analyze_array(image)
        if faces:
            items.append((image, faces))
    return items
