"""Export a gallery to a folder of JSONL + npy files and import it back, losslessly.

Layout (``FORMAT_VERSION`` 1)::

    gallery.json              name, model, dim, threshold, metadata, created_at, counts, embedding files
    subjects.jsonl            one subject per line: name, metadata, created_at
    faces.jsonl               one face per line (row i): subject, box, quality, source, source_sha256,
                              metadata, created_at
    embeddings/<model>.npy    float32 (rows x dim); for the gallery's model, row i is face i;
    embeddings/<model>.rows.npy   for any other model (a re-embedding in progress), its face rows

Everything but the store's internal ids comes back bit for bit (floats are written with Python's
shortest round-trip repr, vectors as raw float32). Each npy file's sha256 is checked on import, and
an import is one transaction: it lands whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import GalleryError
from faceflow.gallery.store import GalleryFace, GalleryInfo, GalleryStore
from faceflow.models.store import sha256_file

FORMAT = "faceflow-gallery"
FORMAT_VERSION = 1
IMPORT_BATCH = 5000
Progress = Callable[[int, int], None]
"""``progress(done, total)`` callback for long exports and imports."""


def _safe(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in model)


def _write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        try:
            return [json.loads(line) for line in fh if line.strip()]
        except ValueError as exc:  # name the file: the decoder's message gives only a line and column
            raise ValueError(f"{path.name}: {exc}") from exc


def export_gallery(store: GalleryStore, gallery: str, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``gallery`` to the folder ``out`` (created; an existing non-empty one needs ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():  # overwrite replaces a folder, never a file
        raise GalleryError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GalleryError(f"{out} exists and is not empty (pass overwrite to replace it)")
    with store.transaction(write=False):  # one consistent snapshot
        g = store.gallery(gallery)
        subjects = store.subjects(gallery)
        faces = store.faces(gallery)
        per_model = {m: store.vectors(gallery, model=m) for m in store.models(gallery)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        row_of = {f.id: i for i, f in enumerate(faces)}
        (tmp / "embeddings").mkdir()
        files: dict[str, dict[str, Any]] = {}
        for m, vs in per_model.items():
            rows = np.array([row_of[int(i)] for i in vs.face_ids], dtype=np.int64)
            order = np.argsort(rows, kind="stable")
            entry: dict[str, Any] = {"file": f"embeddings/{_safe(m)}.npy", "dim": int(vs.vectors.shape[1])}
            np.save(tmp / entry["file"], np.ascontiguousarray(vs.vectors[order], dtype="<f4"), allow_pickle=False)
            if m != g.model:
                entry["rows"] = f"embeddings/{_safe(m)}.rows.npy"
                np.save(tmp / entry["rows"], rows[order], allow_pickle=False)
            entry["sha256"] = {k: sha256_file(tmp / entry[k]) for k in ("file", "rows") if k in entry}
            files[m] = entry
        _write_jsonl(tmp / "subjects.jsonl", (
            {"name": s.name, "metadata": s.metadata, "created_at": s.created_at} for s in subjects))
        _write_jsonl(tmp / "faces.jsonl", (
            {"subject": f.subject, "box": None if f.box is None else list(f.box), "quality": f.quality,
             "source": f.source, "source_sha256": f.source_sha256, "metadata": f.metadata,
             "created_at": f.created_at} for f in faces))
        header = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": g.name, "model": g.model, "dim": g.dim,
            "threshold": g.threshold, "metadata": g.metadata, "created_at": g.created_at,
            "subjects": len(subjects), "faces": len(faces), "embeddings": files,
        }
        (tmp / "gallery.json").write_text(json.dumps(header, indent=2, allow_nan=False) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _load_embeddings(
    src: Path, header: dict[str, Any], n_faces: int
) -> dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """Each model's (face rows, vectors), checked against the recorded sha256 and shapes."""
    out = {}
    for m, entry in header["embeddings"].items():
        for key, digest in entry["sha256"].items():
            if sha256_file(src / entry[key]) != digest:
                raise GalleryError(f"{src / entry[key]} does not match its sha256 in gallery.json")
        vectors = np.load(src / entry["file"], allow_pickle=False).astype(np.float32)
        rows = np.load(src / entry["rows"], allow_pickle=False) if "rows" in entry else np.arange(n_faces)
        if vectors.shape != (len(rows), entry["dim"]) or (len(rows) and rows.max() >= n_faces):
            raise GalleryError(f"{entry['file']} has shape {vectors.shape}, not ({len(rows)}, {entry['dim']})")
        out[m] = (rows, vectors)
    if header["model"] not in out or len(out[header["model"]][0]) != n_faces:
        raise GalleryError(f"the export lacks {header['model']} embeddings for some faces")
    return out


_HEADER_KEYS = ("name", "model", "dim", "threshold", "metadata", "created_at", "subjects", "faces", "embeddings")
_SUBJECT_KEYS = ("name", "metadata", "created_at")
_FACE_KEYS = ("subject", "box", "quality", "source", "source_sha256", "metadata", "created_at")


def _require(row: Any, keys: tuple[str, ...], file: str) -> None:
    """A ValueError naming ``file`` when ``row`` is not an object holding every one of ``keys``."""
    if not isinstance(row, dict):
        raise ValueError(f"{file}: a record is not an object")
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{file}: a record lacks {', '.join(missing)}")


def import_gallery(
    store: GalleryStore, src: str | os.PathLike[str], *, name: str | None = None, progress: Progress | None = None
) -> GalleryInfo:
    """Create a gallery from an export folder (under its own name, or ``name``); one transaction."""
    src = Path(src)
    try:
        header = json.loads((src / "gallery.json").read_text())
    except (OSError, ValueError) as exc:
        raise GalleryError(f"{src} is not a gallery export: {exc}") from exc
    if not isinstance(header, dict):
        raise GalleryError(f"{src} is not a gallery export: gallery.json is not an object")
    if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        raise GalleryError(f"{src}: unsupported format {header.get('format')!r} v{header.get('format_version')}")
    try:  # a file missing, a line cut short, a key gone: one GalleryError, before anything is written
        _require(header, _HEADER_KEYS, "gallery.json")
        subjects = _read_jsonl(src / "subjects.jsonl")
        faces = _read_jsonl(src / "faces.jsonl")
        for records, keys, file in ((subjects, _SUBJECT_KEYS, "subjects.jsonl"), (faces, _FACE_KEYS, "faces.jsonl")):
            for row in records:
                _require(row, keys, file)
        if len(faces) != header["faces"] or len(subjects) != header["subjects"]:
            raise GalleryError(f"{src}: the face or subject count does not match gallery.json")
        embeddings = _load_embeddings(src, header, len(faces))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GalleryError(f"{src} is not a complete gallery export: {exc}") from exc
    target = name or header["name"]
    model = header["model"]
    with store.transaction():
        store.create_gallery(target, model, header["dim"], threshold=header["threshold"],
                             metadata=header["metadata"], created_at=header["created_at"])
        for s in subjects:
            store.add_subject(target, s["name"], s["metadata"], created_at=s["created_at"])
        vectors = embeddings[model][1]
        ids: list[int] = []
        for start in range(0, len(faces), IMPORT_BATCH):
            batch = [
                GalleryFace(subject=f["subject"], embedding=vectors[start + i], box=f["box"], quality=f["quality"],
                            source=f["source"], source_sha256=f["source_sha256"], metadata=f["metadata"],
                            created_at=f["created_at"])
                for i, f in enumerate(faces[start:start + IMPORT_BATCH])
            ]
            ids += store.add_faces(target, batch, model=model)
            if progress:
                progress(len(ids), len(faces))
        for m, (rows, vecs) in embeddings.items():
            if m != model:
                store.put_embeddings(target, m, {ids[int(r)]: v for r, v in zip(rows, vecs, strict=True)})
        return store.gallery(target)
