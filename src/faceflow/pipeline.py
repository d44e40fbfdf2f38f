"""The analysis object: chosen stages run in order over an image and fill in :class:`Face` objects.

>>> from faceflow import Analyzer
>>> faces = Analyzer().analyze("photo.jpg")          # doctest: +SKIP
>>> faces[0].box, faces[0].pose, faces[0].age        # doctest: +SKIP

Running modes, as MediaPipe Tasks has them (the stages never know which one they run in):

* ``mode="image"`` (default): independent pictures, :meth:`Analyzer.analyze` and
  :meth:`Analyzer.analyze_batch`; one analyser may be shared between threads.
* ``mode="video"``: frames of a video with increasing timestamps, faces tracked across them:
  :meth:`Analyzer.analyze_video` for a file PyAV reads, :meth:`Analyzer.analyze_frame` frame by frame.
* ``mode="stream"``: an iterator of frames in, results out as they come (a webcam, the service):
  :meth:`Analyzer.stream`.

A call that does not match the analyser's mode is a :class:`ConfigError` naming the right one.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceflow.errors import ConfigError, FaceflowError, ModelUnavailable, StageError
from faceflow.io import ImageSource, load_image
from faceflow.models.runtime import Runtime
from faceflow.models.store import ModelStore
from faceflow.stage import OptionField, Stage, StageRegistry, registry
from faceflow.types import Face, Image, ImageResult

RUNNING_MODES: tuple[str, ...] = ("image", "video", "stream")
"""Values of ``mode=`` (see the module docstring)."""

_MODE_CALLS = {"image": "analyze() or analyze_batch()", "video": "analyze_video() or analyze_frame()",
               "stream": "stream()"}

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
    mode: str = "image"
    """Running mode: ``"image"``, ``"video"`` or ``"stream"`` (see the module docstring)."""
    tracker: Any = None
    """:class:`~faceflow.track.TrackerOptions` for the video and stream modes (``None``: defaults)."""

    def __post_init__(self) -> None:
        """Check the values now, so a wrong one is one ConfigError naming it, not a failure deep in the
        Analyzer."""
        object.__setattr__(self, "stages", _stage_names(self.stages))
        if not isinstance(self.stage_options, Mapping):
            raise ConfigError(f"stage_options must be a mapping of stage names to their options objects, "
                              f"got {self.stage_options!r}")
        object.__setattr__(self, "workers", _whole_number("workers", self.workers, 1))
        object.__setattr__(self, "threads", _whole_number("threads", self.threads, 0, "None: automatic"))
        object.__setattr__(self, "max_pixels", _whole_number("max_pixels", self.max_pixels, 1, "None: the default"))

    def options_for(self, stage: str, stages: StageRegistry | None = None) -> Any:
        """The options of ``stage``: those given, else the stage's defaults."""
        given = self.stage_options.get(stage)
        return given if given is not None else (stages or registry())[stage].options()

    def with_values(self, values: Mapping[str, Any], stages: StageRegistry | None = None) -> AnalyzerOptions:
        """A copy with fields set by keyword: this class's own fields, a stage's name with its options
        object, or any stage option by its keyword (strings are parsed as the CLI parses them)."""
        reg = stages or registry()
        given = self.stage_options
        if "stage_options" in values:  # a whole mapping by keyword: the base the other keywords change
            given = dataclasses.replace(self, stage_options=values["stage_options"]).stage_options
        _check_stage_options(given, reg)
        own = {f.name for f in dataclasses.fields(self)}
        by_keyword = {f.keyword: f for f in reg.fields()}
        top: dict[str, Any] = {}
        per_stage: dict[str, dict[str, Any]] = {}
        objects = dict(given)
        for key, value in values.items():
            key = _LEGACY.get(key, key)
            if key == "stage_options":
                continue
            if key in own:
                top[key] = value
            elif key in reg and dataclasses.is_dataclass(value) and not isinstance(value, type):
                _check_stage_options({key: value}, reg)
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
        return dataclasses.replace(self, stage_options=objects, **top)


def _seconds(value: Any) -> float:
    """A frame time as float seconds; one that is not a finite number is a :class:`ConfigError` (the
    tracker measures the gaps between times)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"frame time must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds):
        raise ConfigError(f"frame time must be finite, got {seconds}")
    return seconds


def _check_stage_options(given: Mapping[str, Any], reg: StageRegistry) -> None:
    """Refuse a key that is no stage and a value that is not that stage's options object (a dict of its
    fields, another stage's object): either would fail later, or be silently ignored."""
    for stage, value in given.items():
        if stage not in reg:
            raise ConfigError(f"stage_options names an unknown stage {stage!r}; choose from: {', '.join(reg.names())}")
        expected = reg[stage].options
        if value is not None and not isinstance(value, expected):
            raise ConfigError(f"stage_options[{stage!r}] must be {expected.__name__} (the {stage} stage's options), "
                              f"got {type(value).__name__}")


def _whole_number(name: str, value: Any, least: int, none: str | None = None) -> Any:
    """``value`` as an ``int`` of at least ``least`` (or ``None`` where ``none`` says what it means);
    anything else, a bool, a string or a fraction included, is a :class:`ConfigError` naming ``name``."""
    if value is None and none is not None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= least:
        return int(value)
    allowed = f"a whole number, at least {least}" + (f" (or {none})" if none else "")
    raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def _stage_names(value: Any) -> tuple[str, ...]:
    """``stages`` as a tuple of names, from a comma-separated string (as ``--stages`` takes it) or an
    iterable of names; any other value is a :class:`ConfigError`."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    names = tuple(value) if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"stages must be stage names (a tuple of them, or a comma-separated string such as "
                          f"'detect,pose'), got {value!r}")
    return names


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
        if opts.mode not in RUNNING_MODES:
            raise ConfigError(f"unknown mode {opts.mode!r}; choose from: {', '.join(RUNNING_MODES)}")
        plan = reg.plan(opts.stages, dict(opts.stage_options))
        resolved = {name: opts.options_for(name, reg) for name in plan}
        self.options = dataclasses.replace(opts, stages=plan, stage_options=resolved)
        self.registry = reg
        self._owns_runtime = runtime is None
        self.runtime = runtime or Runtime(store, threads=opts.threads, workers=opts.workers)
        self.stages: list[Stage] = [reg[name].build(resolved[name], self.runtime) for name in plan]
        self._tracking: Any = None
        self._last_time: float | None = None
        self._frames = 0

    def _require(self, mode: str, call: str) -> None:
        if self.options.mode != mode:
            raise ConfigError(f"{call} needs an Analyzer in {mode} mode (mode={mode!r}); this one is in "
                              f"{self.options.mode} mode: use {_MODE_CALLS[self.options.mode]}")

    def _new_tracking(self) -> Any:
        from faceflow.track import Tracker
        from faceflow.video import FrameTracking

        self._tracking = FrameTracking(self, Tracker(self.options.tracker))
        self._last_time, self._frames = None, 0
        return self._tracking

    @property
    def tracker(self) -> Any:
        """The :class:`~faceflow.track.Tracker` of the current video or stream (``None`` before one)."""
        return None if self._tracking is None else self._tracking.tracker

    # -- VIDEO and STREAM modes ---------------------------------------------------------------------
    def analyze_video(self, path: str | os.PathLike[str], *, every: int | None = None,
                      fps: float | None = None) -> Iterator[Any]:
        """VIDEO mode: each analysed frame of the file at ``path`` (PyAV), its faces with track ids, as
        :class:`~faceflow.video.FrameResult`; ``every`` N frames or about ``fps`` frames per second.
        Tracks start afresh for each call; a file that cannot be read raises ``VideoError``."""
        self._require("video", "analyze_video()")
        from faceflow.video import iter_frames

        frames = iter_frames(Path(path), every=every, fps=fps)
        return map(self._new_tracking(), frames)

    def analyze_frame(self, image: Image, time: float) -> Any:
        """VIDEO mode: one decoded frame (RGB) at ``time`` seconds, which must increase from call to call;
        its faces keep their track ids across calls. Returns a :class:`~faceflow.video.FrameResult`."""
        self._require("video", "analyze_frame()")
        from faceflow.video import Frame

        seconds = _seconds(time)
        if self._tracking is None:
            self._new_tracking()
        if self._last_time is not None and not seconds > self._last_time:
            raise ConfigError(f"frame times must increase: {seconds} s after {self._last_time} s")
        self._last_time = seconds
        self._frames += 1
        return self._tracking(Frame(self._frames - 1, seconds, image))

    def stream(self, frames: Iterable[Any]) -> Iterator[Any]:
        """STREAM mode: results as frames come in, faces tracked. Each item is an RGB image (timed by
        its arrival), an ``(image, seconds)`` pair or a :class:`~faceflow.video.Frame`. A bad frame, or a
        time that is not a finite number of seconds, gets its error in its result (with a NaN time)
        and the stream goes on."""
        self._require("stream", "stream()")
        from faceflow.video import Frame, FrameResult

        tracking = self._new_tracking()
        start = time.monotonic()

        def step(i: int, item: Any) -> FrameResult:
            if isinstance(item, Frame):
                i, when, image = item.index, item.time, item.image
            elif isinstance(item, tuple) and len(item) == 2:
                image, when = item
            else:
                image, when = item, time.monotonic() - start
            try:
                seconds = _seconds(when)
            except ConfigError as exc:
                return FrameResult(frame=i, time=math.nan, image=image, error=f"frame {i}: {exc}")
            result: FrameResult = tracking(Frame(i, seconds, image))
            return result

        return (step(i, item) for i, item in enumerate(frames))

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

    def load_models(self) -> None:
        """Load every model the stages use now rather than on the first image (a server's readiness).

        The detector runs on a blank image; the later stages each run on a made-up face in it, which
        builds their models whatever they answer for it (a stage refusing the made-up face is fine).
        """
        import numpy as np

        from faceflow.recognize import box_landmarks5

        image = np.full((160, 160, 3), 128, np.uint8)
        box = np.array([40, 30, 120, 130], np.float32)
        for stage in self.stages:
            face = Face(box=box.copy(), score=1.0, landmarks5=box_landmarks5(box))
            try:
                stage.run(image, [face])
            except ModelUnavailable:
                raise
            except Exception:  # the made-up face may not suit a stage: its models are built all the same
                continue

    def analyze(self, image: ImageSource) -> list[Face]:
        """Decode ``image`` (path, bytes, PIL or numpy RGB) and return its faces, largest score first."""
        self._require("image", "analyze()")
        return self.analyze_array(load_image(image, max_pixels=self.options.max_pixels))

    def analyze_array(self, image: Image, timings: dict[str, list[float]] | None = None) -> list[Face]:
        """Run the stages on a decoded RGB image; ``timings`` collects seconds per stage name."""
        faces: list[Face] = []
        for i, (name, stage) in enumerate(zip(self.options.stages, self.stages, strict=True)):
            if i and not faces:
                break
            t0 = time.perf_counter()
            given = len(faces)
            try:
                faces = stage.run(image, faces)
            except FaceflowError:
                raise
            except Exception as exc:
                raise StageError(f"stage {name!r} failed: {type(exc).__name__}: {exc}") from exc
            _check_returned(name, faces, None if i == 0 else given)
            if timings is not None:
                timings.setdefault(name, []).append(time.perf_counter() - t0)
        return faces

    def analyze_file(self, path: str | os.PathLike[str]) -> tuple[ImageResult, Image | None]:
        """Analyse one file; a :class:`FaceflowError` is recorded on the result instead of raised,
        except :class:`ModelUnavailable`: a missing model is no image's fault and stops a batch."""
        return self.analyze_source(path, str(path))

    def analyze_source(self, source: ImageSource, name: str) -> tuple[ImageResult, Image | None]:
        """:meth:`analyze_file` for any source :func:`~faceflow.io.load_image` takes (uploaded bytes),
        recorded under ``name`` as its ``path``."""
        self._require("image", "analyze_source()")
        result = ImageResult(path=name)
        try:
            image = load_image(source, max_pixels=self.options.max_pixels)
        except FaceflowError as exc:  # a path's errors name it already; bytes get their name here
            result.error = str(exc) if isinstance(source, str | os.PathLike) else f"{name}: {exc}"
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
        self._require("image", "analyze_batch()")
        return self._batch(list(paths), workers, on_result)

    def _batch(self, items: list[str | os.PathLike[str]], workers: int | None,
               on_result: Callable[[ImageResult, Image | None], None] | None) -> Iterator[ImageResult]:
        workers = workers or self.options.workers
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            analysed = pool.map(self.analyze_file, items) if pool else map(self.analyze_file, items)
            for result, image in analysed:
                if on_result:
                    on_result(result, image)
                yield result
        finally:  # an error (a missing model) or a consumer that stops early: drop the queued images
            if pool is not None:
                pool.shutdown(cancel_futures=True)


def _check_returned(stage: str, faces: Any, given: int | None) -> None:
    """Refuse what a stage's ``run`` returned unless it is a list of :class:`Face` (as many as it was
    ``given``, for a stage after the first): a plug-in's slip is a :class:`StageError` on this image, not a
    crash further on or faces silently lost."""
    if not isinstance(faces, list):
        raise StageError(f"stage {stage!r} returned {type(faces).__name__ if faces is not None else 'None'}, "
                         f"not a list of faces")
    strange = next((f for f in faces if not isinstance(f, Face)), None)
    if strange is not None:
        raise StageError(f"stage {stage!r} returned a {type(strange).__name__} among its faces")
    if given is not None and len(faces) != given:
        raise StageError(f"stage {stage!r} returned {len(faces)} faces for {given}")


def analyze(image: ImageSource, **options: Any) -> list[Face]:
    """One-shot convenience: ``Analyzer(**options).analyze(image)``."""
    return Analyzer(**options).analyze(image)

