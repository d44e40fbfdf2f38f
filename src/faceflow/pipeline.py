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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from faceflow.detect import DEFAULT_DETECTOR, DETECTORS, Detector, DetectorOptions, create_detector
from faceflow.errors import ConfigError, FaceflowError
from faceflow.io import ImageSource, load_image
from faceflow.models.store import ModelStore
from faceflow.types import Face, Image, ImageResult, Stage

STAGES: tuple[str, ...] = ("detect", "landmarks", "mesh", "pose", "embed", "attributes")
"""Stage names for ``stages=`` / ``--stages``, in the order they run."""

AGE_GENDER_SOURCES: tuple[str, ...] = ("cydral", "heads")
"""Values of ``age_gender=`` / ``--age-gender`` (see :attr:`AnalyzerOptions.age_gender`)."""

DEFAULT_STAGES: tuple[str, ...] = ("detect", "landmarks", "pose", "attributes")
"""What ``faceflow analyze`` runs unless told otherwise: boxes, landmarks, pose, age/gender/expression."""


@dataclass(frozen=True)
class AnalyzerOptions:
    """Everything that configures an :class:`Analyzer`; unknown keyword names fail loudly."""

    stages: tuple[str, ...] = DEFAULT_STAGES
    detector: str = DEFAULT_DETECTOR
    detector_options: DetectorOptions = field(default_factory=DetectorOptions)
    landmarks: str = "mesh"
    """Source of the 68 points: ``"mesh"`` (a regression from MediaPipe's mesh, the registry's
    ``mesh_to_68``) or ``"dlib"`` (dlib's predictor, closer to 300-W's points; its weights are licensed
    for non-commercial use only)."""
    age_gender: str = "cydral"
    """Source of age and gender: ``"cydral"`` (dlib's Cydral networks, CC0) or ``"heads"`` (heads
    trained on UTKFace over faceflow's own features, more accurate there; non-commercial, as UTKFace)."""
    embedders: tuple[str, ...] = ("sface",)
    flip: bool = False
    """Average each embedding with that of the mirrored face (slower, slightly more accurate)."""
    threads: int | None = None
    """Intra-op threads per model; ``None`` uses ``FACEFLOW_THREADS`` or every core."""
    max_pixels: int | None = None


def _resolve_stages(requested: Iterable[str], detector: str) -> tuple[str, ...]:
    """Validate names and add the stages that the requested ones depend on."""
    wanted = set()
    for name in requested:
        name = name.strip()
        if not name:
            continue
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; choose from: {', '.join(STAGES)}")
        wanted.add(name)
    if not wanted:
        raise ConfigError("no stage requested")
    wanted.add("detect")
    from faceflow.detect import detector_class

    # Stages that need five points pull in the 68-point stage when the detector gives none.
    if wanted & {"embed", "pose", "attributes"} and not detector_class(detector).gives_landmarks5:
        wanted.add("landmarks")
    return tuple(s for s in STAGES if s in wanted)


class Analyzer:
    """Runs detection and the chosen stages; returns one :class:`Face` per face found."""

    def __init__(
        self, options: AnalyzerOptions | None = None, *, store: ModelStore | None = None, **overrides: Any
    ) -> None:
        opts = options or AnalyzerOptions()
        if overrides:
            known = {f.name for f in dataclasses.fields(AnalyzerOptions)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            if "stages" in overrides and isinstance(overrides["stages"], str):
                overrides["stages"] = tuple(overrides["stages"].split(","))
            opts = dataclasses.replace(opts, **overrides)
        if opts.detector not in DETECTORS:
            raise ConfigError(f"unknown detector {opts.detector!r}; choose one of: {', '.join(DETECTORS)}")
        if opts.age_gender not in AGE_GENDER_SOURCES:
            raise ConfigError(f"unknown age_gender {opts.age_gender!r}; choose one of: {', '.join(AGE_GENDER_SOURCES)}")
        det_opts = opts.detector_options
        if opts.threads is not None and det_opts.threads is None:
            det_opts = dataclasses.replace(det_opts, threads=opts.threads)
        self.options = dataclasses.replace(
            opts, stages=_resolve_stages(opts.stages, opts.detector), detector_options=det_opts
        )
        self.store = store
        self.detector: Detector = create_detector(opts.detector, det_opts, store)
        self.stages: list[Stage] = [self._build(name) for name in self.options.stages if name != "detect"]

    def _build(self, name: str) -> Stage:
        o, store = self.options, self.store
        if name == "landmarks":
            from faceflow.landmarks import Landmarks68Stage

            return Landmarks68Stage(source=o.landmarks, threads=o.threads, store=store)
        if name == "mesh":
            from faceflow.landmarks import MeshStage

            return MeshStage(threads=o.threads, store=store)
        if name == "pose":
            from faceflow.pose import PoseStage

            return PoseStage()
        if name == "embed":
            from faceflow.recognize import EmbedStage

            return EmbedStage(models=o.embedders, flip=o.flip, threads=o.threads, store=store)
        if name == "attributes":
            if o.age_gender == "heads":
                from faceflow.attribute_heads import HeadAttributesStage

                return HeadAttributesStage(threads=o.threads, store=store)
            from faceflow.attributes import AttributesStage

            return AttributesStage(threads=o.threads, store=store)
        raise ConfigError(f"unknown stage {name!r}")  # unreachable: names are validated above

    def analyze(self, image: ImageSource) -> list[Face]:
        """Decode ``image`` (path, bytes, PIL or numpy RGB) and return its faces, largest score first."""
        return self.analyze_array(load_image(image, max_pixels=self.options.max_pixels))

    def analyze_array(self, image: Image, timings: dict[str, list[float]] | None = None) -> list[Face]:
        """Run the stages on a decoded RGB image; ``timings`` collects seconds per stage name."""
        t0 = time.perf_counter()
        faces = self.detector.detect(image)
        if timings is not None:
            timings.setdefault("detect", []).append(time.perf_counter() - t0)
        for stage in self.stages:
            if not faces:
                break
            t0 = time.perf_counter()
            faces = stage.run(image, faces)
            if timings is not None:
                timings.setdefault(stage.name, []).append(time.perf_counter() - t0)
        return faces

    def analyze_file(self, path: str | os.PathLike[str]) -> tuple[ImageResult, Image | None]:
        """Analyse one file; a :class:`FaceflowError` is recorded on the result instead of raised."""
        result = ImageResult(path=str(path))
        try:
            image = load_image(path, max_pixels=self.options.max_pixels)
            result.height, result.width = int(image.shape[0]), int(image.shape[1])
            result.faces = self.analyze_array(image)
            return result, image
        except FaceflowError as exc:
            result.error = str(exc)
            return result, None

    def analyze_batch(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        workers: int = 1,
        on_result: Callable[[ImageResult, Image | None], None] | None = None,
    ) -> Iterator[ImageResult]:
        """Analyse many files in order; a bad file gets its ``error`` and the batch goes on.

        ``workers`` > 1 analyses that many images at once in threads (the runtimes release the GIL).
        ``on_result`` sees each result with its decoded image (for annotated output).
        """
        items = list(paths)
        if workers <= 1:
            results: Iterable[tuple[ImageResult, Image | None]] = map(self.analyze_file, items)
            for result, image in results:
                if on_result:
                    on_result(result, image)
                yield result
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for result, image in pool.map(self.analyze_file, items):
                if on_result:
                    on_result(result, image)
                yield result


def analyze(image: ImageSource, **options: Any) -> list[Face]:
    """One-shot convenience: ``Analyzer(**options).analyze(image)``."""
    return Analyzer(**options).analyze(image)

