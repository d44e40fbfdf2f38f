"""Where a batch writes its results: ``faces.jsonl`` lines and the annotated images under ``--out``.

Pure functions decide the layout (each input's mirrored relative path, a collision-free annotated
name for each, JSON-safe text for any file name); :class:`AnnotatedWriter` does the writing, never
overwrites an input, removes what an earlier run into the same folder left behind, and turns a
failed write into an error message for that one image instead of an exception for the batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from faceflow.errors import ConfigError

ANNOTATED_DIR = "annotated"
"""Folder under ``--out`` that holds the annotated images."""

MANIFEST = ".faceflow-annotated"
"""File in the annotated folder listing what the last run wrote (one relative path per line, raw
bytes), so that a rerun removes its own stale images and nothing else."""
VIDEO_MANIFEST = ".faceflow-videos"
"""The list of the videos ``faceflow anonymize`` wrote into its folder (never cleaned up as stale: a
video costs minutes to make again)."""

KEPT_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Annotated images keep these suffixes; any other format is written as PNG named ``<name>.png``."""


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as valid Unicode text: bytes that are not UTF-8 become ``\\xNN`` escapes.

    File names on POSIX are bytes; Python carries undecodable ones as lone surrogates, which a JSON
    or terminal consumer may reject. The escapes keep the name readable and the text valid.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def safe_text(text: str) -> str:
    """``text`` with any lone surrogate (an undecodable file-name byte) written as a ``\\xNN`` escape."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def item_error(path: str | os.PathLike[str], message: str) -> str:
    """A batch item's error as printed: ``"<path>: <message>"``, the path once even when the library's
    message already starts with it (most do: :class:`~faceflow.errors.InputError` names its source)."""
    message = safe_text(message)
    shown = display_path(path)
    return message if message.startswith(shown) else f"{shown}: {message}"


def json_line(record: dict[str, Any]) -> str:
    """One ``faces.jsonl`` line; ``path`` and ``error`` made valid Unicode (see :func:`display_path`)."""
    record = dict(record)
    record["path"] = display_path(record["path"])
    if record.get("error") is not None:
        record["error"] = safe_text(record["error"])
    return json.dumps(record, ensure_ascii=False) + "\n"


def result_paths(inputs: Iterable[Path], files: Sequence[Path]) -> list[Path]:
    """Relative output path of each file (same order), mirroring it below the common folder of the inputs.

    ``inputs`` are what the user named (files and folders); a folder counts as its own base, so
    ``analyze photos/`` writes ``photos/a/b.jpg`` as ``a/b.jpg`` and equal names never collide. Paths
    are compared as written (made absolute, not resolved), so a link to a file outside its folder
    keeps the name it has inside the folder.
    """
    bases = [os.path.abspath(p if Path(p).is_dir() else Path(p).parent) for p in inputs]
    absolute = [os.path.abspath(f) for f in files]
    if not absolute:
        return []
    common = os.path.commonpath(bases + [os.path.dirname(f) for f in absolute])
    return [Path(os.path.relpath(f, common)) for f in absolute]


def annotated_names(rel_paths: Sequence[Path]) -> list[Path]:
    """A distinct annotated file name for each relative path (same order).

    JPEG and PNG keep their name; another format becomes ``<name>.png`` (``a.gif`` -> ``a.gif.png``),
    so ``a.gif`` and ``a.webp`` stay apart. Names still equal after that, ignoring case (the same file
    given twice, ``a.gif`` beside a real ``a.gif.png``, ``A.jpg`` beside ``a.jpg`` on a case-blind
    disk), get ``~2``, ``~3``, ... before the suffix, in input order.
    """
    return list(iter_annotated_names(rel_paths, set()))


class KeySet(Protocol):
    """What :func:`iter_annotated_names` needs of the names given out: a ``set[str]``, or a set kept
    on disk when the list is too long for memory (:class:`faceflow.distributed.jobs.SpillingKeySet`)."""

    def __contains__(self, key: object, /) -> bool: ...

    def add(self, key: str, /) -> None: ...


def iter_annotated_names(rel_paths: Iterable[Path], taken: KeySet) -> Iterator[Path]:
    """:func:`annotated_names`, lazily (for a list too long to hold): ``taken`` collects the names'
    keys as they are given out (what :func:`refresh_annotated_list` keeps)."""
    for rel in rel_paths:
        name = rel if rel.suffix.lower() in KEPT_SUFFIXES else rel.with_name(rel.name + ".png")
        candidate, n = name, 1
        while annotated_key(candidate) in taken:
            n += 1
            candidate = name.with_name(f"{name.stem}~{n}{name.suffix}")
        taken.add(annotated_key(candidate))
        yield candidate


def common_folder(folders: Iterable[str | os.PathLike[str]], files: Iterable[str | os.PathLike[str]]) -> str | None:
    """The folder :func:`result_paths` mirrors below: the common path of the named ``folders`` and of
    the folders holding ``files`` (absolute, not resolved); ``None`` without either. One pass, any length."""
    common: str | None = None
    last: str | None = None
    for d in [os.path.abspath(f) for f in folders]:
        common = d if common is None else os.path.commonpath([common, d])
    for f in files:
        d = os.path.dirname(os.path.abspath(f))
        if d != last:
            common = d if common is None else os.path.commonpath([common, d])
            last = d
    return common


def annotated_key(rel: Path) -> str:
    """The key under which the list in a folder names ``rel`` (names differing in case are one)."""
    return os.fsencode(rel).decode("utf-8", "surrogateescape").casefold()


def check_out_dir(out: Path) -> None:
    """A :class:`ConfigError` (a usage error) when ``out`` exists and is not a folder."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {display_path(out)} exists and is not a folder")


def prepare_out_dir(out: Path) -> None:
    """Create ``out``; a :class:`ConfigError` (a usage error) when it is a file or cannot be made."""
    check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {display_path(out)} cannot be created: {exc.strerror or exc}") from None


def open_for_writing(path: Path) -> TextIO:
    """``path`` opened for writing UTF-8 text; a :class:`ConfigError` when that is impossible."""
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {display_path(path)}: {exc.strerror or exc}") from None


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (resolved) is ``folder`` (resolved) or lies below it."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


class AnnotatedWriter:
    """Writes each input's annotated image to its planned name under ``out/annotated`` (or ``out/<subdir>``;
    ``subdir=""`` writes into ``out`` itself, as ``faceflow anonymize`` does).

    Built from the inputs the user named and the files of the batch (in order); :meth:`start`
    removes the images an earlier run listed in its manifest and that this run will not rewrite,
    then records this run's names; :meth:`next_target` names the file for each result in turn and
    :meth:`save` writes it, returning ``None`` or the reason it could not (a file already at the name
    that no earlier run listed is the user's and is left alone).
    """

    def __init__(self, out: Path, inputs: Iterable[Path], files: Sequence[Path], *,
                 subdir: str = ANNOTATED_DIR, manifest: str = MANIFEST) -> None:
        self.root = out / subdir if subdir else out
        self.manifest = manifest
        names = annotated_names(result_paths(inputs, files))
        self._targets: dict[str, deque[Path]] = defaultdict(deque)
        for f, name in zip(files, names, strict=True):
            self._targets[str(f)].append(name)
        self._names = names
        self._inputs = {os.path.realpath(f) for f in files}
        self._listed: set[str] = {annotated_key(rel) for rel in read_annotated_list(self.root, manifest)}
        self._lock = threading.Lock()

    def start(self) -> list[Path]:
        """Remove stale images of an earlier run (never an input); list those it keeps. Returns the removed.

        A :class:`ConfigError` when the annotated folder cannot be made or written.
        """
        keep = {annotated_key(n) for n in self._names}
        listed = read_annotated_list(self.root, self.manifest)
        kept = {annotated_key(rel): rel for rel in listed if annotated_key(rel) in keep}
        self._listed = set(kept)
        return refresh_annotated_list(self.root, kept.values(), keep, self._inputs, self.manifest)

    def claim(self, target: Path, what: str = "annotated image") -> str | None:
        """``None`` when ``target`` (in the folder) may be written: it is not there, or an earlier run
        listed it; else why ``what`` is not written (an input, or a file of the user's, never replaced)."""
        if os.path.realpath(target) in self._inputs:
            return f"{what} not written: {display_path(target)} is an input"
        with self._lock:
            listed = annotated_key(target.relative_to(self.root)) in self._listed
        foreign = not listed and os.path.lexists(target)
        return not_ours(target, what) if foreign else None

    def record(self, target: Path) -> None:
        """List ``target`` (written by the caller) in the manifest, as :meth:`save` does its images."""
        self._record(target.relative_to(self.root))

    def next_target(self, path: str) -> Path:
        """Where the annotated image of the batch file ``path`` goes (taken in order for a repeated path)."""
        return self.root / self._targets[path].popleft()

    def save(self, target: Path, encoded: bytes) -> str | None:
        """Write ``encoded`` to ``target`` safely (temporary file, then rename); ``None``, or why not."""
        problem = self.claim(target) or save_annotated(target, encoded)
        if problem is None:
            self._record(target.relative_to(self.root))
        return problem

    def _record(self, rel: Path) -> None:
        """Add a written image to the manifest (after the write: a kill between leaves a copy unlisted,
        which no run removes, rather than a listed name that was never written)."""
        with self._lock:
            if annotated_key(rel) in self._listed:
                return
            if append_annotated_list(self.root, rel, self.manifest):
                self._listed.add(annotated_key(rel))


def not_ours(target: Path, what: str = "annotated image") -> str:
    """Why ``what`` is not written at ``target``: a file is there that no earlier faceflow run listed."""
    return (f"{what} not written: {display_path(target)} exists and no earlier faceflow run wrote it "
            "(move it away or choose another --out)")


def append_annotated_list(root: Path, rel: Path, manifest_name: str = MANIFEST) -> bool:
    """List ``rel`` (just written below ``root``) in ``root``'s list, one line in one appending write
    (so that processes appending at once do not mix lines); False when the list cannot be written
    (unlisted is safe: the image is only never cleaned up)."""
    try:
        with open(root / manifest_name, "ab") as fh:
            fh.write(os.fsencode(rel) + b"\n")
    except OSError:
        return False
    return True


def save_annotated(target: Path, encoded: bytes) -> str | None:
    """Write one annotated image through a temporary file renamed into place; ``None``, or why not."""
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # A short temporary name ("<name>.tmp" could pass the 255-byte limit that <name> just fits),
        # opened exclusively so that threads never share one; the file mode follows the umask.
        tmp = target.with_name(f".faceflow-{uuid.uuid4().hex[:16]}.tmp")
        with open(tmp, "xb") as fh:
            fh.write(encoded)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return f"annotated image not written to {display_path(target)}: {exc.strerror or exc}"
    return None


def refresh_annotated_list(root: Path, names: Iterable[Path], keep: KeySet, inputs: set[str],
                           manifest_name: str = MANIFEST) -> list[Path]:
    """Remove the images that the list in ``root`` (an earlier run's) names and that this run will not
    write (their keys are not in ``keep``; never one of the ``inputs``, given resolved), then write
    ``names`` as the new list. Returns the removed; a :class:`ConfigError` when ``root`` cannot be written."""
    manifest = root / manifest_name
    removed: list[Path] = []
    for rel in read_annotated_list(root, manifest_name):
        target = root / rel
        if rel.is_absolute() or ".." in rel.parts or annotated_key(rel) in keep:
            continue
        if os.path.realpath(target) in inputs or not target.is_file():
            continue
        try:
            target.unlink()
            removed.append(target)
        except OSError:
            continue
        _prune(root, target.parent)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{manifest_name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            for n in names:
                fh.write(os.fsencode(n) + b"\n")
        os.replace(tmp, manifest)
    except OSError as exc:
        raise ConfigError(f"cannot write annotated images in {display_path(root)}: "
                          f"{exc.strerror or exc}") from None
    return removed


def read_annotated_list(root: Path, manifest: str = MANIFEST) -> list[Path]:
    """The relative paths the manifest in ``root`` lists (none when there is none or it cannot be read)."""
    try:
        return [Path(os.fsdecode(line)) for line in (root / manifest).read_bytes().splitlines() if line]
    except OSError:
        return []


def _prune(root: Path, folder: Path) -> None:
    """Remove folders left empty by :func:`refresh_annotated_list`, up to ``root``."""
    while folder != root and inside(folder, root):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
