"""Stages: what each one declares, the registry of them, and the order the pipeline runs them in.

A stage is a small class with ``run(image, faces) -> faces``. It is registered by a
:class:`StageSpec` that says its name, the :class:`~faceflow.types.Face` fields it ``needs`` and
``provides``, the fields it reuses when another stage has filled them (``after``), its own frozen
options dataclass and the factory that builds it from those options and a
:class:`~faceflow.models.runtime.Runtime`. The pipeline, the CLI's options and the docs all come from
these declarations, so adding a stage means writing its module and registering it:

* built-in stages are listed in :data:`BUILTIN` (``"module:ATTRIBUTE"`` of a ``StageSpec``);
* other packages register through the ``faceflow.stages`` entry-point group, each entry naming a
  ``StageSpec`` (or a function returning one)::

      [project.entry-points."faceflow.stages"]
      smile = "faceflow_smile:SPEC"

A field that :class:`Face` does not declare is stored in ``face.extra`` under the stage's field name
and written to JSON with the other fields.

Options fields may carry CLI metadata through :func:`option` (help text, a short flag, choices); every
field is reachable from the CLI (as ``--STAGE-FIELD`` unless it declares a shorter ``flag``) and from
``Analyzer(**overrides)`` under the same name with underscores.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
import threading
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from faceflow.errors import ConfigError
from faceflow.types import Face, Image

if TYPE_CHECKING:
    from faceflow.models.runtime import Runtime

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "faceflow.stages"

BUILTIN: tuple[str, ...] = (
    "faceflow.detect:STAGE",
    "faceflow.landmarks:MESH_STAGE",
    "faceflow.landmarks:LANDMARKS_STAGE",
    "faceflow.pose:STAGE",
    "faceflow.recognize:STAGE",
    "faceflow.attributes:STAGE",
    "faceflow.quality:STAGE",
    "faceflow.liveness:STAGE",
)
"""The stages that ship with faceflow, in the order used to break ties between independent stages."""

_NAME = re.compile(r"[a-z][a-z0-9_-]*")
"""A stage name or option flag: it becomes part of CLI flags and Python keywords."""

class Stage(ABC):
    """One step of the pipeline: reads the fields in ``needs``, fills those in ``provides``.

    Models load lazily, from the runtime given to the constructor, on first :meth:`run`.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def run(self, image: Image, faces: list[Face]) -> list[Face]:
        """Fill this stage's fields on ``faces`` and return them (a detector returns new faces)."""


def option(default: Any, help: str, *, flag: str | None = None,
           choices: Sequence[str] | Callable[[], Sequence[str]] | None = None) -> Any:
    """A field of a stage's options dataclass with what the CLI needs to expose it.

    ``flag`` is a short CLI name (``"landmarks"`` for ``--landmarks``) and Analyzer keyword; without
    it the field is ``--STAGE-FIELD``. ``choices`` (or a function returning them) are checked when the
    options are built from the CLI or keywords.
    """
    metadata = {"help": help, "flag": flag, "choices": choices}
    if isinstance(default, list | dict | set):
        raise TypeError("options must be immutable: use a tuple")
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionField:
    """One options field as the CLI and the keyword interface see it."""

    stage: str
    name: str
    key: str
    """CLI flag without dashes and Analyzer keyword (with ``_`` for ``-``)."""
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None

    @property
    def keyword(self) -> str:
        return self.key.replace("-", "_")

    @property
    def base(self) -> Any:
        """The field's type without ``| None``: ``bool``, ``int``, ``float``, ``str`` or ``tuple``."""
        return _unwrap(self.type)[0]

    def parse(self, value: Any) -> Any:
        """``value`` (a string from the CLI, or a Python value) converted to the field's type and checked."""
        base, optional = _unwrap(self.type)
        if value is None:
            if optional:
                return None
            raise ConfigError(f"{self.key} needs a value")
        try:
            if base is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                out: Any = value.lower() in ("1", "true", "yes", "on")
            elif base is tuple:
                items = value.split(",") if isinstance(value, str) else list(value)
                out = tuple(str(v).strip() for v in items if str(v).strip())
            elif base in (int, float, str):
                if base is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                out = base(value)
            else:
                out = value
        except (TypeError, ValueError):
            raise ConfigError(f"{self.key}: {value!r} is not a valid {getattr(base, '__name__', base)}") from None
        if self.choices is not None:
            for item in out if isinstance(out, tuple) else (out,):
                if item not in self.choices:
                    raise ConfigError(f"unknown {self.key} {item!r}; choose from: {', '.join(self.choices)}")
        return out


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``(base type, optional)`` of an annotation such as ``float | None`` or ``tuple[str, ...]``."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        rest = [a for a in args if a is not type(None)]
        base, _ = _unwrap(rest[0]) if len(rest) == 1 else (Any, False)
        return base, type(None) in args
    if origin is tuple:
        return tuple, False
    return tp, False


FieldsOf = Callable[[Any], tuple[str, ...]]


@dataclass(frozen=True)
class StageSpec:
    """The declaration of one stage: the pipeline orders, builds and documents stages from these."""

    name: str
    help: str
    options: type[Any]
    """A frozen dataclass; its defaults are the stage's defaults."""
    factory: str | Callable[[Any, Runtime], Stage]
    """``"module:attr"`` (imported only when the stage is built) or a callable ``(options, runtime)``."""
    needs: tuple[str, ...] | FieldsOf = ()
    """Face fields read; a stage providing each is pulled into the pipeline when missing."""
    provides: tuple[str, ...] | FieldsOf = ()
    after: tuple[str, ...] = ()
    """Fields reused when present: the stage runs after their providers, without pulling them in."""
    label: Callable[[Face], str | None] | None = None
    """Short text for annotated images (e.g. ``"32 F"``), or ``None`` when the stage adds none."""

    def needs_of(self, options: Any) -> tuple[str, ...]:
        return self.needs(options) if callable(self.needs) else self.needs

    def provides_of(self, options: Any) -> tuple[str, ...]:
        return self.provides(options) if callable(self.provides) else self.provides

    def build(self, options: Any, runtime: Runtime) -> Stage:
        factory = self.factory
        if isinstance(factory, str):
            module, attr = factory.split(":")
            factory = getattr(importlib.import_module(module), attr)
        return factory(options, runtime)

    def fields(self) -> list[OptionField]:
        """The options fields with their CLI keys (``flag``, else ``STAGE-FIELD``)."""
        hints = typing.get_type_hints(self.options)
        out = []
        for f in dataclasses.fields(self.options):
            meta = f.metadata
            choices = meta.get("choices")
            if callable(choices):
                choices = choices()
            key = meta.get("flag") or f"{self.name}-{f.name}".replace("_", "-")
            out.append(OptionField(self.name, f.name, key, hints[f.name], f.default, meta.get("help", ""),
                                   tuple(choices) if choices is not None else None))
        return out


class StageRegistry:
    """Stage specs by name: the built-in ones and those of the ``faceflow.stages`` entry points."""

    def __init__(self, sources: Iterable[str] = BUILTIN, *, entry_points: bool = True) -> None:
        self._sources = tuple(sources)
        self._entry_points = entry_points
        self._specs: dict[str, StageSpec] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, StageSpec]:
        specs: dict[str, StageSpec] = {}
        self._broken: dict[str, str] = {}
        self._plugins: dict[str, str] = {}
        for target in self._sources:
            module, attr = target.split(":")
            self._add(specs, getattr(importlib.import_module(module), attr), target)
        if self._entry_points:
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                # A broken plug-in is left out, named, and must not take the other stages (or the CLI) down.
                try:
                    obj = ep.load()
                    spec = obj() if callable(obj) and not isinstance(obj, StageSpec) else obj
                    self._add(specs, spec, ep.value)
                    self._plugins[spec.name] = ep.value
                except Exception as exc:
                    detail = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                    problem = f"stage plug-in {ep.name!r} ({ep.value}) is left out: {detail}"
                    log.warning("%s", problem)
                    self._broken.setdefault(ep.name, problem)
        return specs

    @staticmethod
    def _add(specs: dict[str, StageSpec], spec: Any, origin: str) -> None:
        """Check ``spec`` (from ``origin``) against the stages in ``specs`` and add it."""
        if not isinstance(spec, StageSpec):
            raise ConfigError(f"{origin} is not a faceflow StageSpec")
        if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
            raise ConfigError(f"{origin}: {spec.name!r} is not a valid stage name (lower-case letters, digits, "
                              f"'_' and '-', starting with a letter)")
        if spec.name in specs:
            raise ConfigError(f"two stages are named {spec.name!r} (the second from {origin})")
        if not (isinstance(spec.options, type) and dataclasses.is_dataclass(spec.options)):
            raise ConfigError(f"{origin}: stage {spec.name!r}: options must be a dataclass")
        for what in ("needs", "provides", "after"):
            value = getattr(spec, what)
            if not (callable(value) and what != "after") and not (
                    isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{origin}: stage {spec.name!r}: {what} must be a tuple of field names, "
                                  f"got {value!r}")
        taken = {f.key: f.stage for other in specs.values() for f in other.fields()}
        for f in spec.fields():
            if not _NAME.fullmatch(f.key):
                raise ConfigError(f"{origin}: stage {spec.name!r}: {f.key!r} is not a valid option flag")
            if f.key in taken:
                raise ConfigError(f"{origin}: option --{f.key} is declared by stages {taken[f.key]!r} and "
                                  f"{spec.name!r}")
        specs[spec.name] = spec

    @property
    def specs(self) -> dict[str, StageSpec]:
        if self._specs is None:
            with self._lock:
                if self._specs is None:
                    self._specs = self._load()
        return self._specs

    @property
    def broken(self) -> dict[str, str]:
        """Plug-ins left out, by entry-point name: what is wrong with each."""
        _ = self.specs
        return self._broken

    def plugin(self, name: str) -> str | None:
        """The entry point (``module:attr``) that registered stage ``name``; ``None`` for a built-in one."""
        _ = self.specs
        return self._plugins.get(name)

    def __getitem__(self, name: str) -> StageSpec:
        try:
            return self.specs[name]
        except KeyError:
            if name in self.broken:
                raise ConfigError(self.broken[name]) from None
            raise ConfigError(f"unknown stage {name!r}; choose from: {', '.join(self.specs)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def fields(self) -> list[OptionField]:
        """Every stage's options fields; two stages may not claim the same CLI key."""
        out: dict[str, OptionField] = {}
        for spec in self.specs.values():
            for f in spec.fields():
                if f.key in out:
                    raise ConfigError(f"option --{f.key} is declared by stages {out[f.key].stage!r} and {spec.name!r}")
                out[f.key] = f
        return list(out.values())

    def plan(self, requested: Iterable[str], options: dict[str, Any]) -> tuple[str, ...]:
        """The stages to run, in order: ``requested`` plus ``detect`` plus the providers of what they
        need, ordered so that each stage runs after the providers of the fields it needs or reuses.

        Raises :class:`ConfigError` for an unknown stage, a needed field nobody provides, or a cycle.
        """
        wanted: list[str] = []
        for name in requested:
            name = name.strip()
            if name and name not in wanted:
                self[name]
                wanted.append(name)
        if not wanted:
            raise ConfigError("no stage requested")
        if "detect" in self.specs and "detect" not in wanted:
            wanted.insert(0, "detect")

        def opts(name: str) -> Any:
            return options.get(name) or self.specs[name].options()

        # Pull in providers of missing needs until nothing is missing.
        changed = True
        while changed:
            changed = False
            for name in list(wanted):
                for need in self.specs[name].needs_of(opts(name)):
                    if any(need in self.specs[s].provides_of(opts(s)) for s in wanted):
                        continue
                    provider = next((s for s in self.specs if need in self.specs[s].provides_of(opts(s))), None)
                    if provider is None:
                        raise ConfigError(f"stage {name!r} needs {need!r}, which no registered stage provides")
                    wanted.append(provider)
                    changed = True

        # Order: a stage runs after every other planned stage providing a field it needs or reuses.
        rank = {n: i for i, n in enumerate(self.specs)}
        before: dict[str, set[str]] = {}
        for name in wanted:
            spec = self.specs[name]
            reads = set(spec.needs_of(opts(name))) | set(spec.after)
            before[name] = {s for s in wanted if s != name and reads & set(self.specs[s].provides_of(opts(s)))}
        order: list[str] = []
        pending = sorted(wanted, key=rank.__getitem__)
        while pending:
            ready = [n for n in pending if before[n] <= set(order)]
            if not ready:
                raise ConfigError(f"stages {', '.join(pending)} depend on each other in a cycle")
            order.append(ready[0])
            pending.remove(ready[0])
        return tuple(order)


_registry: StageRegistry | None = None
_registry_lock = threading.Lock()


def registry() -> StageRegistry:
    """The process's stage registry (built-in stages and installed plug-ins), loaded on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = StageRegistry()
        return _registry
