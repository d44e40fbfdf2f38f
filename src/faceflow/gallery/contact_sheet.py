"""The HTML pages of a clustered photo folder: an index of persons, one contact sheet per person, and
the unassigned faces, each face a thumbnail linking to its photo."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from faceflow.types import Face, Image


def save_thumbnail(image: Image, face: Face, path: Path) -> None:
    """A 112x112 JPEG of the face (its box grown by 30 %) at ``path``."""
    from PIL import Image as PILImage

    from faceflow.align import crop_box

    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(crop_box(image, face.box, 1.3, 112)).save(path, quality=88)


def write_contact_sheets(out: Path, clusters: list[dict[str, Any]], unassigned: list[dict[str, Any]],
                         n_faces: int) -> None:
    """``out/index.html``, ``out/clusters/<id>.html`` per cluster (old pages removed) and ``out/unassigned.html``."""
    sheets = out / "clusters"
    sheets.mkdir(exist_ok=True)
    for old in sheets.glob("*.html"):
        old.unlink()
    cards = []
    for c in clusters:
        page = f"clusters/{c['id']}.html"
        cards.append(f'<a class="card" href="{page}"><img src="{c["faces"][0]["thumb"]}">'
                     f"<span>#{c['id']} · {c['size']}</span></a>")
        _write_sheet(out / page, f"Cluster {c['id']} ({c['size']} faces)", c["faces"], "../")
    _write_sheet(out / "unassigned.html", f"Unassigned ({len(unassigned)} faces)", unassigned, "")
    _write_html(out / "index.html", f"{len(clusters)} persons in {n_faces} faces",
                "".join(cards) + f'<p><a href="unassigned.html">{len(unassigned)} faces unassigned</a></p>')


_CSS = ("body{font-family:sans-serif;margin:1em}a.card,figure{display:inline-block;margin:4px;text-align:center;"
        "font-size:11px;width:120px;vertical-align:top;word-break:break-all}img{width:112px;height:112px;"
        "object-fit:cover;border-radius:4px}")


def _write_html(path: Path, title: str, body: str) -> None:
    path.write_text(f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{_CSS}</style><h1>{html.escape(title)}</h1>{body}\n")


def _write_sheet(path: Path, title: str, faces: list[dict[str, Any]], up: str) -> None:
    figures = "".join(
        f'<figure><a href="{html.escape(Path(f["photo"]).as_uri())}"><img src="{up}{f["thumb"]}"></a>'
        f"<figcaption>{html.escape(Path(f['photo']).name)}"
        f"{' · ' + html.escape(f['unassigned']) if f.get('unassigned') else ''}</figcaption></figure>"
        for f in faces)
    _write_html(path, title, figures)
