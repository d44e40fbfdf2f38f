"""Output shared by the benchmark scripts: the figures as indented JSON on stdout and, if asked, in a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_json(figures: Any, path: Path | None) -> None:
    """Print ``figures`` as JSON and also write them to ``path`` (folders made) when it is given."""
    text = json.dumps(figures, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
