"""A resumable analysis job's folder: the manifest of its inputs and its results as Parquet shards.

Layout of ``OUT`` (``faceflow analyze --engine ray --out OUT``)::

    OUT/manifest.parquet          one row per input, in input order (see MANIFEST_SCHEMA)
    OUT/settings.txt              the analysis settings of the shards (stages, options; see plan_job)
    OUT/shards/faces-<first>.parquet    one row per face of one batch (see FACE_COLUMNS)
    OUT/shards/images-<first>.parquet   one row per image of that batch (see IMAGE_SCHEMA)
    OUT/faces.jsonl               assembled from the shards in input order, as the in-process engine writes it
    OUT/annotated/...             the annotated images (unless --no-annotate), named as the in-process engine names them

``<first>`` is the manifest index of the batch's first image (12 digits). A batch writes its faces
shard, then its images shard, each to a temporary name renamed into place: an images shard exists
only when the batch is complete, so it is the batch's commit record. A rerun (:func:`plan_job`)
compares the new manifest with the old one row by row, drops the shards holding an input that
changed (size, mtime, or content hash when asked) or vanished, drops half-written batches and any
shard overlapping one already kept, and leaves the rest pending: every input ends up in exactly one
kept shard, whatever was killed when.

Annotated images: the driver names each input's annotated image as the in-process engine would
(:func:`faceflow.outputs.result_paths` below the common folder, :func:`faceflow.outputs.annotated_names`)
and keeps the name in the manifest's ``annotated`` column; a batch writes its images before its
shards, so a committed batch has them. An input whose name changed (the inputs' common folder moved,
or the earlier run wrote none) counts as changed: its batch is redone and rewrites them. Images an
earlier run listed and this one does not name are removed, as in process.

This module needs pyarrow only (extra ``ray``); Ray itself is in :mod:`faceflow.distributed.engine`.
"""

from __future__ import annotations

import contextlib
import glob as globbing
import heapq
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from faceflow.errors import ConfigError
from faceflow.extras import require
from faceflow.models.store import sha256_file
from faceflow.outputs import (
    ANNOTATED_DIR,
    annotated_key,
    common_folder,
    display_path,
    iter_annotated_names,
    json_line,
    read_annotated_list,
    refresh_annotated_list,
)
from faceflow.types import Face, ImageResult

MANIFEST_FILE = "manifest.parquet"
SHARDS_DIR = "shards"
PENDING_FILE = ".pending.parquet"
SETTINGS_FILE = "settings.txt"
"""The analysis settings the kept shards were computed with (see :func:`plan_job`)."""
LIST_SUFFIXES = (".txt", ".lst", ".list")
"""An input with one of these suffixes is a list of paths, one per line (blank lines and ``#`` lines skipped)."""
PARQUET_SUFFIX = ".parquet"
"""An input with this suffix is a Parquet file whose ``path`` column (or ``--column``) lists the inputs."""
_CHUNK = 65_536
"""Rows per step when writing or comparing manifests (bounds the driver's memory)."""


def _pa() -> Any:
    return require("pyarrow", "the Ray engine's Parquet files")


def _pq() -> Any:
    return require("pyarrow.parquet", "the Ray engine's Parquet files")


def manifest_schema() -> Any:
    """``index`` (int64, input order), ``path`` (text as faces.jsonl shows it), ``path_bytes`` (the
    file name's exact bytes), ``size`` (bytes) and ``mtime_ns`` (null when the file cannot be
    stat'ed: it still gets its error line), ``sha256`` (hex; null unless content hashes were asked),
    ``annotated`` (the annotated image's path below ``OUT/annotated``, as bytes; null without annotation)."""
    pa = _pa()
    return pa.schema([("index", pa.int64()), ("path", pa.string()), ("path_bytes", pa.binary()),
                      ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string()),
                      ("annotated", pa.binary())])


def image_schema() -> Any:
    """One row per image of a batch: ``index``, ``path``, ``width``/``height`` (null when not decoded),
    ``faces`` (how many), ``error`` (null or the message)."""
    pa = _pa()
    return pa.schema([("index", pa.int64()), ("path", pa.string()), ("width", pa.int32()),
                      ("height", pa.int32()), ("faces", pa.int32()), ("error", pa.string())])


FACE_COLUMNS = ("index", "path", "face", "box", "score", "detector", "landmarks5", "yaw", "pitch", "roll",
                "age", "gender", "gender_confidence", "expression", "quality", "json")
"""Columns of a faces shard before the embeddings: ``face`` is the face's rank in its image; ``box``
fixed-size list of 4 float32, ``landmarks5`` of 10 (x, y per point); pose in degrees; ``quality`` the
unified score; ``json`` the face exactly as faces.jsonl writes it. Then one ``embedding_<model>``
column per embedder (fixed-size list of float32) when embeddings were asked."""


def face_schema(embedding_dims: dict[str, int]) -> Any:
    """The faces shard schema (see :data:`FACE_COLUMNS`) for the given embedders' dimensions."""
    pa = _pa()
    f32 = pa.float32()
    fields = [("index", pa.int64()), ("path", pa.string()), ("face", pa.int32()),
              ("box", pa.list_(f32, 4)), ("score", pa.float64()), ("detector", pa.string()),
              ("landmarks5", pa.list_(f32, 10)), ("yaw", f32), ("pitch", f32), ("roll", f32),
              ("age", f32), ("gender", pa.string()), ("gender_confidence", f32), ("expression", pa.string()),
              ("quality", f32), ("json", pa.string())]
    fields += [(f"embedding_{name}", pa.list_(f32, dim)) for name, dim in sorted(embedding_dims.items())]
    return pa.schema(fields)


# -- inputs ------------------------------------------------------------------------------------------


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_inputs(inputs: Sequence[str | os.PathLike[str]], *, exclude: Sequence[Path] = (),
                  column: str = "path") -> Iterator[Path]:
    """The image files named by ``inputs``, lazily: folders walked (recursively, sorted, videos left
    out), glob patterns expanded (``**`` recursive, sorted), list files (:data:`LIST_SUFFIXES`) and
    Parquet files (their ``column``) read line by line or batch by batch, other files as they are.
    A list's relative paths are taken from the current folder, as written."""
    from faceflow.io import iter_image_files
    from faceflow.video import is_video

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            yield from (f for f in iter_image_files([path], exclude=list(exclude), unreadable=True) if not is_video(f))
        elif not path.exists() and _is_glob(text):
            matches = sorted(globbing.glob(text, recursive=True))
            if not matches:
                raise ConfigError(f"the pattern {text!r} matches no file")
            for m in matches:
                yield from expand_inputs([m], exclude=exclude) if Path(m).is_dir() else [Path(m)]
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            with open(path, "rb") as fh:
                for raw in fh:
                    line = raw.rstrip(b"\r\n")
                    if line.strip() and not line.lstrip().startswith(b"#"):
                        yield Path(os.fsdecode(line))
        elif path.suffix.lower() == PARQUET_SUFFIX and path.is_file():
            pf = _pq().ParquetFile(path)
            if column not in pf.schema_arrow.names:
                raise ConfigError(f"{display_path(path)} has no column {column!r} (columns: "
                                  f"{', '.join(pf.schema_arrow.names)})")
            for batch in pf.iter_batches(columns=[column], batch_size=_CHUNK):
                yield from (Path(p) for p in batch.column(0).to_pylist() if p)
        else:
            yield path


# -- the manifest -----------------------------------------------------------------------------------


def _stat_row(index: int, path: Path, content_hash: bool) -> dict[str, Any]:
    size: int | None = None
    mtime: int | None = None
    try:
        st = path.stat()
        size, mtime = int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        pass
    digest = None
    if content_hash and size is not None:
        with contextlib.suppress(OSError):
            digest = sha256_file(path)
    return {"index": index, "path": display_path(path), "path_bytes": os.fsencode(path), "size": size,
            "mtime_ns": mtime, "sha256": digest, "annotated": None}


def write_manifest(files: Iterable[Path], target: Path, *, content_hash: bool = False) -> int:
    """Stat (and with ``content_hash`` hash) each file and write the manifest to ``target``
    (through a temporary name); returns the number of rows. Memory: one chunk of rows at a time."""
    pa, pq = _pa(), _pq()
    schema = manifest_schema()
    tmp = target.with_name(target.name + ".tmp")
    n = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        rows: list[dict[str, Any]] = []
        for f in files:
            rows.append(_stat_row(n, f, content_hash))
            n += 1
            if len(rows) >= _CHUNK:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows or n == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    os.replace(tmp, target)
    return n


def _manifest_batches(path: Path, columns: list[str]) -> Iterator[Any]:
    yield from _pq().ParquetFile(path).iter_batches(columns=columns, batch_size=_CHUNK)


def changed_indices(old: Path, new: Path, n_new: int, *, content_hash: bool) -> npt.NDArray[np.bool_]:
    """Per index of the ``old`` manifest (and beyond): True where the input is not the same as in
    ``new`` (another path, size, mtime, or with ``content_hash`` hash) or is gone from it, or where
    ``new`` names an annotated image that ``old`` did not (another name, or none)."""
    columns = ["index", "path_bytes", "size", "mtime_ns"] + (["sha256"] if content_hash else [])
    old_file = _pq().ParquetFile(old)
    n_old = old_file.metadata.num_rows
    changed = np.zeros(max(n_old, n_new), bool)
    changed[n_new:] = True
    old_has_names = "annotated" in old_file.schema_arrow.names  # manifests before annotation had no names
    old_it = _manifest_batches(old, columns + (["annotated"] if old_has_names else []))
    new_it = _manifest_batches(new, [*columns, "annotated"])
    buf_new: dict[str, list[Any]] = {c: [] for c in [*columns, "annotated"]}
    for batch in old_it:
        a = batch.to_pydict()
        while len(buf_new["index"]) < len(a["index"]):
            nb = next(new_it, None)
            if nb is None:
                break
            for c, v in nb.to_pydict().items():
                buf_new[c].extend(v)
        k = min(len(a["index"]), len(buf_new["index"]))
        for j in range(k):
            i = a["index"][j]
            if any(a[c][j] != buf_new[c][j] or a[c][j] is None for c in columns[1:]):
                changed[i] = True
            name = buf_new["annotated"][j]
            if name is not None and (not old_has_names or a["annotated"][j] != name):
                changed[i] = True
        for c in buf_new:
            del buf_new[c][:k]
    return changed


class SpillingKeySet:
    """A set of strings held in memory up to ``limit`` keys, then in a temporary SQLite file: naming
    the annotated images of a list of any length needs every name given out (to keep them distinct),
    about 230 bytes each in a Python set, which would be gigabytes for ten million inputs."""

    def __init__(self, limit: int = 500_000) -> None:
        self.limit = limit
        self._memory: set[str] | None = set()
        self._db: sqlite3.Connection | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def __contains__(self, key: object, /) -> bool:
        if self._memory is not None:
            return key in self._memory
        assert self._db is not None
        return self._db.execute("SELECT 1 FROM k WHERE key = ?", (key,)).fetchone() is not None

    def add(self, key: str, /) -> None:
        if self._memory is not None:
            self._memory.add(key)
            if len(self._memory) > self.limit:
                self._spill()
            return
        assert self._db is not None
        self._db.execute("INSERT OR IGNORE INTO k VALUES (?)", (key,))

    def _spill(self) -> None:
        """Move the keys to a SQLite file in the system's temporary folder (local disk, not the job's)."""
        assert self._memory is not None
        self._folder = tempfile.TemporaryDirectory(prefix="faceflow-names-")
        self._db = sqlite3.connect(Path(self._folder.name) / "names.sqlite", isolation_level=None)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                               "CREATE TABLE k (key TEXT PRIMARY KEY) WITHOUT ROWID; BEGIN;")
        self._db.executemany("INSERT INTO k VALUES (?)", ((k,) for k in self._memory))
        self._memory = None

    @property
    def spilled(self) -> bool:
        """True once the keys live on disk."""
        return self._memory is None

    def close(self) -> None:
        """Drop the file (if any); the set is empty afterwards."""
        if self._db is not None:
            self._db.close()
        if self._folder is not None:
            self._folder.cleanup()
        self._memory, self._db, self._folder = set(), None, None


def name_annotated(manifest: Path, folders: Sequence[str | os.PathLike[str]], out: Path,
                   *, memory_keys: int = 500_000) -> tuple[int, npt.NDArray[np.bool_]]:
    """Fill the ``annotated`` column of ``manifest`` (rewritten in place): each input's annotated image
    name as the in-process engine gives it when named the ``folders`` among the inputs and each other
    input file as such; remove the images an earlier run listed in ``out/annotated`` and this one does
    not name, and list only those it keeps (the actors list each image once written, as in process).
    Returns how many were removed and, per manifest index, whether a file no earlier run listed is at
    its name (the user's: never replaced). An input inside ``out/annotated`` is a :class:`ConfigError`.
    Memory: one chunk of rows, and the names given out (to keep them distinct) and those listed before,
    each moved to a temporary SQLite file past ``memory_keys`` of them."""
    root = out / ANNOTATED_DIR

    def paths() -> Iterator[str]:
        for batch in _manifest_batches(manifest, ["path_bytes"]):
            yield from (os.fsdecode(b) for b in batch.column(0).to_pylist())

    common = common_folder(folders, paths())
    below = os.path.realpath(root).rstrip(os.sep) + os.sep
    taken, listed = SpillingKeySet(memory_keys), SpillingKeySet(memory_keys)
    try:
        for rel in read_annotated_list(root):
            listed.add(annotated_key(rel))
        return _name_annotated(manifest, common, below, root, taken, listed)
    finally:
        taken.close()
        listed.close()


def _name_annotated(manifest: Path, common: str | None, below: str, root: Path, taken: SpillingKeySet,
                    listed: SpillingKeySet) -> tuple[int, npt.NDArray[np.bool_]]:
    """:func:`name_annotated` once the common folder and the names listed before are known."""
    pa, pq = _pa(), _pq()
    foreign = np.zeros(pq.ParquetFile(manifest).metadata.num_rows, bool)
    tmp = manifest.with_name(manifest.name + ".named")
    with pq.ParquetWriter(tmp, manifest_schema()) as writer:
        for batch in _manifest_batches(manifest, manifest_schema().names):
            files = [os.fsdecode(b) for b in batch.column(batch.schema.get_field_index("path_bytes")).to_pylist()]
            clash = next((f for f in files if os.path.realpath(f).startswith(below)), None)
            if clash is not None:
                raise ConfigError(f"input {display_path(clash)} lies in {display_path(root)}, where "
                                  "annotated images are written: choose another --out")
            rel = (Path(os.path.relpath(os.path.abspath(f), common)) for f in files)
            named = list(iter_annotated_names(rel, taken))
            indices = batch.column(batch.schema.get_field_index("index")).to_numpy()
            foreign[indices] = [annotated_key(n) not in listed and os.path.lexists(root / n) for n in named]
            names = [os.fsencode(n) for n in named]
            table = pa.Table.from_batches([batch])
            writer.write_table(table.set_column(table.schema.get_field_index("annotated"), "annotated",
                                                pa.array(names, pa.binary())))
    os.replace(tmp, manifest)

    def kept() -> Iterator[Path]:
        for batch in _manifest_batches(manifest, ["annotated"]):
            names = (Path(os.fsdecode(b)) for b in batch.column(0).to_pylist())
            yield from (n for n in names if annotated_key(n) in listed)

    return len(refresh_annotated_list(root, kept(), taken, set())), foreign


# -- shards -----------------------------------------------------------------------------------------


def shard_names(first: int) -> tuple[str, str]:
    """File names of the faces and images shards of the batch starting at manifest index ``first``."""
    return f"faces-{first:012d}.parquet", f"images-{first:012d}.parquet"


def _write_atomically(table: Any, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _pq().write_table(table, tmp)
    os.replace(tmp, target)


def face_row(index: int, path: str, rank: int, face: Face, embeddings: bool) -> dict[str, Any]:
    """One faces-shard row (see :data:`FACE_COLUMNS`)."""
    row: dict[str, Any] = {
        "index": index, "path": path, "face": rank, "box": face.box.astype(np.float32).tolist(),
        "score": float(face.score), "detector": face.detector,
        "landmarks5": None if face.landmarks5 is None else face.landmarks5.reshape(-1).tolist(),
        "yaw": None, "pitch": None, "roll": None, "age": None, "gender": None, "gender_confidence": None,
        "expression": None, "quality": None,
        "json": json.dumps(face.to_dict(embeddings=embeddings), ensure_ascii=False),
    }
    if face.pose is not None:
        row.update(yaw=face.pose.yaw, pitch=face.pose.pitch, roll=face.pose.roll)
    if face.age is not None:
        row["age"] = float(face.age.value)
    if face.gender is not None:
        row.update(gender=str(face.gender.value), gender_confidence=face.gender.confidence)
    if face.expression is not None:
        row["expression"] = face.expression.value
    if face.quality is not None:
        row["quality"] = face.quality.unified
    if embeddings:
        for name, vector in face.embeddings.items():
            row[f"embedding_{name}"] = np.asarray(vector, np.float32).reshape(-1).tolist()
    return row


def write_batch(shards: Path, indices: Sequence[int], results: Sequence[ImageResult], *,
                embeddings: bool) -> tuple[int, int]:
    """Write one batch's faces shard, then its images shard (the commit record); returns (faces, errors)."""
    pa = _pa()
    face_rows: list[dict[str, Any]] = []
    image_rows: list[dict[str, Any]] = []
    dims: dict[str, int] = {}
    for index, result in zip(indices, results, strict=True):
        path = display_path(result.path)
        for rank, face in enumerate(result.faces):
            face_rows.append(face_row(index, path, rank, face, embeddings))
            if embeddings:
                dims.update({k: int(np.asarray(v).size) for k, v in face.embeddings.items()})
        image_rows.append({"index": index, "path": path, "width": result.width, "height": result.height,
                           "faces": len(result.faces), "error": result.error})
    schema = face_schema(dims)
    for row in face_rows:
        for name in dims:
            row.setdefault(f"embedding_{name}", None)
    faces_name, images_name = shard_names(int(indices[0]))
    shards.mkdir(parents=True, exist_ok=True)
    _write_atomically(pa.Table.from_pylist(face_rows, schema=schema), shards / faces_name)
    _write_atomically(pa.Table.from_pylist(image_rows, schema=image_schema()), shards / images_name)
    return len(face_rows), sum(r["error"] is not None for r in image_rows)


@dataclass(frozen=True)
class JobPlan:
    """What a (re)run of a job has to do."""

    total: int
    """Inputs in the manifest."""
    done: int
    """Inputs already in kept shards."""
    dropped_shards: int
    """Shards removed: half-written, overlapping, or holding an input that changed."""
    pending: Path
    """Parquet file of the pending inputs (``index``, ``path_bytes``, ``annotated``, ``foreign``: a file
    no earlier run listed is at the annotated name), in input order."""
    stale_annotated: int = 0
    """Annotated images of an earlier run removed because this run names none like them."""


def _kept_shards(shards: Path, changed: npt.NDArray[np.bool_], total: int) -> tuple[npt.NDArray[np.bool_], int]:
    """Mark the inputs of every shard that may be kept, removing the others; returns (done, dropped)."""
    pq = _pq()
    done = np.zeros(total, bool)
    dropped = 0
    images = sorted(shards.glob("images-*.parquet"))
    faces = {p.name for p in shards.glob("faces-*.parquet")}
    for tmp in shards.glob(".*.tmp"):  # a write cut short
        tmp.unlink(missing_ok=True)
    complete = {"faces-" + p.name[len("images-"):] for p in images}
    for name in faces - complete:  # the batch died between its two files
        (shards / name).unlink(missing_ok=True)
        dropped += 1
    for image_file in images:
        faces_file = shards / ("faces-" + image_file.name[len("images-"):])
        try:
            idx = pq.read_table(image_file, columns=["index"]).column(0).to_numpy()
        except Exception:  # unreadable (a torn file from another writer): redo its batch
            idx = None
        bad = (idx is None or not faces_file.exists() or idx.size == 0 or int(idx.max()) >= total
               or bool(changed[idx[idx < changed.size]].any()) or bool(done[idx].any()))
        if bad:
            image_file.unlink(missing_ok=True)
            faces_file.unlink(missing_ok=True)
            dropped += 1
            continue
        done[idx] = True
    return done, dropped


def plan_job(out: Path, files: Iterable[Path], *, content_hash: bool = False,
             annotate: Sequence[str | os.PathLike[str]] | None = None, settings: str = "") -> JobPlan:
    """Write ``out``'s manifest for ``files``, reconcile the shards of an earlier run with it, and
    write the pending inputs (see the module docstring). With ``annotate`` (the folders among the
    inputs the user named), each input gets the name of its annotated image (:func:`name_annotated`).
    ``settings`` names what else the results depend on (stages, options): shards of an earlier run
    with other settings (or none recorded) are all dropped; they are recorded once the shards agree."""
    pa, pq = _pa(), _pq()
    out.mkdir(parents=True, exist_ok=True)
    shards = out / SHARDS_DIR
    shards.mkdir(exist_ok=True)
    manifest = out / MANIFEST_FILE
    new = out / (MANIFEST_FILE + ".new")
    total = write_manifest(files, new, content_hash=content_hash)
    stale, foreign = name_annotated(new, annotate, out) if annotate is not None else (0, np.zeros(total, bool))
    settings_file = out / SETTINGS_FILE
    same = settings_file.is_file() and settings_file.read_text(encoding="utf-8") == settings
    if manifest.exists() and same:
        changed = changed_indices(manifest, new, total, content_hash=content_hash)
    else:
        changed = np.ones(total, bool)  # no manifest, or other settings: any shard there is not this job's
    # the changed inputs' shards go before the new manifest takes the old one's place: a run killed in
    # between still has the old manifest, so the next one finds the same changes (never the reverse)
    done, dropped = _kept_shards(shards, changed, total)
    os.replace(new, manifest)
    if not same:  # only now: a run killed before leaves the old settings, so the next one drops again
        tmp = settings_file.with_name(SETTINGS_FILE + ".tmp")
        tmp.write_text(settings, encoding="utf-8")
        os.replace(tmp, settings_file)
    pending = out / PENDING_FILE
    schema = pa.schema([("index", pa.int64()), ("path_bytes", pa.binary()), ("annotated", pa.binary()),
                        ("foreign", pa.bool_())])
    with pq.ParquetWriter(pending, schema) as writer:
        for batch in _manifest_batches(manifest, ["index", "path_bytes", "annotated"]):
            idx = batch.column(0).to_numpy()
            keep = ~done[idx]
            if keep.any():
                table = pa.Table.from_batches([batch]).append_column("foreign", pa.array(foreign[idx]))
                writer.write_table(table.filter(pa.array(keep)))
    return JobPlan(total, int(done.sum()), dropped, pending, stale)


# -- reading the results ----------------------------------------------------------------------------


def iter_records(out: Path) -> Iterator[dict[str, Any]]:
    """The results of ``out``'s kept shards, one faces.jsonl record per image, in input order.

    Shards cover disjoint sets of inputs but may interleave (a rerun fills the gaps an earlier run
    left), so they are merged by index, opening a shard only when its first index comes up: memory
    holds the shards that overlap at one point, a few batches.
    """
    pq = _pq()
    shards = out / SHARDS_DIR
    starts = sorted((int(p.name[len("images-"):-len(".parquet")]), p) for p in shards.glob("images-*.parquet"))
    heap: list[tuple[int, int, Iterator[tuple[int, dict[str, Any]]]]] = []
    serial = 0

    def open_shard(image_file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        images = pq.read_table(image_file).to_pylist()
        faces_file = shards / ("faces-" + image_file.name[len("images-"):])
        faces = pq.read_table(faces_file, columns=["index", "json"]).to_pylist()
        by_index: dict[int, list[Any]] = {}
        for f in faces:
            by_index.setdefault(f["index"], []).append(json.loads(f["json"]))
        for row in images:
            record = {"path": row["path"], "width": row["width"], "height": row["height"],
                      "faces": by_index.get(row["index"], []), "error": row["error"]}
            yield row["index"], record

    def push(it: Iterator[tuple[int, dict[str, Any]]]) -> None:
        nonlocal serial
        first = next(it, None)
        if first is not None:
            serial += 1
            heapq.heappush(heap, (first[0], serial, _chain(first, it)))

    pos = 0
    while pos < len(starts) or heap:
        while pos < len(starts) and (not heap or starts[pos][0] <= heap[0][0]):
            push(open_shard(starts[pos][1]))
            pos += 1
        if not heap:
            continue
        _, _, it = heapq.heappop(heap)
        index, record = next(it)
        yield {"index": index, **record}
        push(it)


def _chain(first: tuple[int, dict[str, Any]],
           rest: Iterator[tuple[int, dict[str, Any]]]) -> Iterator[tuple[int, dict[str, Any]]]:
    yield first
    yield from rest


def write_jsonl(out: Path, fh: TextIO) -> tuple[int, int, int]:
    """Write every record (input order) to ``fh`` as faces.jsonl lines; returns (images, faces, errors)."""
    images = faces = errors = 0
    for record in iter_records(out):
        record.pop("index")
        fh.write(json_line(record))
        images += 1
        faces += len(record["faces"])
        errors += record["error"] is not None
    return images, faces, errors
