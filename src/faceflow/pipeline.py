"""The analysis object: chosen stages run in order over an image and fill in :class:`Face` objects.

>>> from faceflow import Analyzer
>>> faces = Analyzer().analyze("photo.jpg")          # doctest: +SKIP
>>> faces[0].box, faces[0].pose, faces[0].age        # doctest: +SKIP

One ``Analyzer`` may be shared between threads: models load lazily, once, behind locks.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from faceflow.errors import ConfigError, FaceflowError, ModelUnavailable
from faceflow.io import ImageSource, load_image
from faceflow.models.runtime import Runtime
from faceflow.models.store import ModelStore
from faceflow.stage import OptionField, Stage, StageRegistry, registry
from faceflow.types import Face, Image, ImageResult

DEFAULT_STAGES: tuple[str, ...] = ("detect", "landmarks", "pose", "attributes")
"""What ``faceflow analyze`` runs unless told otherwise: boxes, landmarks, pose, age/gender/expression."""

_LEGACY = {"detector_options": "detect"}
"""Keywords of earlier versions that name a stage's whole options object."""


@dataclass(frozen=True)
class AnalyzerOptions:
    """Everything that configures an :class:`Analyzer`; unknown names fail loudly.

    ``stage_options`` maps a stage's name to its options object (see each stage's ``*Options``
    dataclass, e.g. ``{"landmarks": LandmarksOptions(source="dlib")}``); stages not named there run
    with their defaults. :meth:`with_values` sets single fields by their keyword (``detector="fast"``,
    ``landmarks="dlib"``, ``landmarks_mirror=False``), as the CLI does.
    """

    stages: tuple[str, ...] = DEFAULT_STAGES
    stage_options: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = None
    """Intra-op threads per model; ``None``: ``FACEFLOW_THREADS``, else the cores shared by the workers."""
    workers: int = 1
    """Images analysed at once by :meth:`Analyzer.analyze_batch` (threads)."""
    max_pixels: int | None = None
    """Largest image decoded (default ``FACEFLOW_MAX_PIXELS`` or 100 megapixels)."""

    def options_for(self, stage: str, stages: StageRegistry | None = None) -> Any:
        """The options of ``stage``: those given, else the stage's defaults."""
        given = self.stage_options.get(stage)
        return given if given is not None else (stages or registry())[stage].options()

    def with_values(self, values: Mapping[str, Any], stages: StageRegistry | None = None) -> AnalyzerOptions:
        """A copy with fields set by keyword: this class's own fields, a stage's name with its options
        object, or any stage option by its keyword (strings are parsed as the CLI parses them)."""
        reg = stages or registry()
        own = {f.name for f in dataclasses.fields(self)}
        by_keyword = {f.keyword: f for f in reg.fields()}
        top: dict[str, Any] = {}
        per_stage: dict[str, dict[str, Any]] = {}
        objects = dict(self.stage_options)
        for key, value in values.items():
            key = _LEGACY.get(key, key)
            if key in own:
                top[key] = value
            elif key in reg and dataclasses.is_dataclass(value) and isinstance(value, reg[key].options):
                objects[key] = value
            elif key in by_keyword:
                f: OptionField = by_keyword[key]
                per_stage.setdefault(f.stage, {})[f.name] = f.parse(value)
            else:
                known = sorted(own | set(by_keyword) | set(reg.names()))
                raise ConfigError(f"unknown option {key!r}; known: {', '.join(known)}")
        for stage, changes in per_stage.items():
            base = objects.get(stage) or reg[stage].options()
            objects[stage] = dataclasses.replace(base, **changes)
        if isinstance(top.get("stages"), str):
            top["stages"] = tuple(top["stages"].split(","))
        return dataclasses.replace(self, stage_options=objects, **top)


class Analyzer:
    """Runs detection and the chosen stages; returns one :class:`Face` per face found.

    The analyser owns a :class:`~faceflow.models.runtime.Runtime` (its loaded models) unless one is
    passed in; :meth:`close` (or ``with Analyzer(...) as a:``) frees it.
    """

    def __init__(
        self,
        options: AnalyzerOptions | None = None,
        *,
        runtime: Runtime | None = None,
        store: ModelStore | None = None,
        stage_registry: StageRegistry | None = None,
        **overrides: Any,
    ) -> None:
        reg = stage_registry or registry()
        opts = (options or AnalyzerOptions()).with_values(overrides, reg)
        if opts.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {opts.workers}")
        plan = reg.plan(opts.stages, dict(opts.stage_options))
        resolved = {name: opts.options_for(name, reg) for name in plan}
        self.options = dataclasses.replace(opts, stages=plan, stage_options=resolved)
        self.registry = reg
        self._owns_runtime = runtime is None
        self.runtime = runtime or Runtime(store, threads=opts.threads, workers=opts.workers)
        self.stages: list[Stage] = [reg[name].build(resolved[name], self.runtime) for name in plan]

    @property
    def detector(self) -> Any:
        """The detect stage's detector (``None`` when no stage detects)."""
        return next((getattr(s, "detector", None) for s in self.stages if s.name == "detect"), None)

    def close(self) -> None:
        """Free the models this analyser loaded (a runtime passed in by the caller stays open)."""
        if self._owns_runtime:
            self.runtime.close()

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def analyze(self, image: ImageSource) -> list[Face]:
        """Decode ``image`` (path, bytes, PIL or numpy RGB) and return its faces, largest score first."""
        return self.analyze_array(load_image(image, max_pixels=self.options.max_pixels))

    def analyze_array(self, image: Image, timings: dict[str, list[float]] | None = None) -> list[Face]:
        """Run the stages on a decoded RGB image; ``timings`` collects seconds per stage name."""
        faces: list[Face] = []
        for i, (name, stage) in enumerate(zip(self.options.stages, self.stages, strict=True)):
            if i and not faces:
                break
            t0 = time.perf_counter()
            faces = stage.run(image, faces)
            if timings is not None:
                timings.setdefault(name, []).append(time.perf_counter() - t0)
        return faces

    def analyze_file(self, path: str | os.PathLike[str]) -> tuple[ImageResult, Image | None]:
        """Analyse one file; a :class:`FaceflowError` is recorded on the result instead of raised,
        except :class:`ModelUnavailable`: a missing model is no image's fault and stops a batch."""
        result = ImageResult(path=str(path))
        try:
            image = load_image(path, max_pixels=self.options.max_pixels)
        except FaceflowError as exc:
            result.error = str(exc)
            return result, None
        result.height, result.width = int(image.shape[0]), int(image.shape[1])
        try:
            result.faces = self.analyze_array(image)
        except ModelUnavailable:
            raise
        except FaceflowError as exc:
            result.error = str(exc)
        return result, image

    def analyze_batch(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        workers: int | None = None,
        on_result: Callable[[ImageResult, Image | None], None] | None = None,
    ) -> Iterator[ImageResult]:
        """Analyse many files in order; a bad file gets its ``error`` and the batch goes on.

        ``workers`` > 1 analyses that many images at once in threads (the runtimes release the GIL);
        ``None`` takes the analyser's ``workers`` option, which also sized its models' thread budget.
        ``on_result`` sees each result with its decoded image (for annotated output).
        """
        items = list(paths)
        workers = workers or self.options.workers
        if workers <= 1:
            results: Iterable[tuple[ImageResult, Image | None]] = map(self.analyze_file, items)
            for result, image in results:
                if on_result:
                    on_result(result, image)
                yield result
            return
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for result, image in pool.map(self.analyze_file, items):
                if on_result:
                    on_result(result, image)
                yield result
        finally:  # an error (a missing model) or a consumer that stops early: drop the queued images
            pool.shutdown(cancel_futures=True)


def analyze(image: ImageSource, **options: Any) -> list[Face]:
    """One-shot convenience: ``Analyzer(**options).analyze(image)``."""
    return Analyzer(**options).analyze(image)

