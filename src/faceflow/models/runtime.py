"""The runtime: every loaded model of one analysis, built once, shared between threads, closed together.

An :class:`~faceflow.pipeline.Analyzer` owns one :class:`Runtime`; stages ask it for models by their
registry name (``runtime.onnx("sface")``, ``runtime.tflite("face_mesh")``, ``runtime.dlib(...)``) and
never keep module-level caches, so a server can hold several analysers, each with its own models and
thread budget, and free them with :meth:`Runtime.close`.

Lock policy, per kind of model (what a caller may assume):

* ONNX Runtime sessions: no lock; ``InferenceSession.run`` is thread-safe.
* LiteRT interpreters: one lock per interpreter around set-input/invoke/get-output, inside
  :class:`TFLiteModel` (an interpreter holds its tensors as state).
* dlib objects (shape predictors): no lock; their call operators are const.
* Objects with per-call state that a stage builds itself (OpenCV's ``FaceDetectorYN``): the stage holds
  its own lock around the call, as :class:`~faceflow.detect.base.Detector` does.

A model's file is fetched (possibly downloaded) and the model built under a lock of that model's own,
never under a lock shared by all models (the store locks per file too): one model downloading never
blocks another model's use, and a model already built costs a dictionary lookup, not a file check.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy.typing as npt

from faceflow.errors import ConfigError
from faceflow.models.registry import get
from faceflow.models.store import ModelStore, default_store

T = TypeVar("T")


def cpu_count() -> int:
    """Cores this process may use (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_budget(threads: int | None = None, workers: int = 1) -> int:
    """Intra-op threads per model so that ``workers`` concurrent analyses never oversubscribe the cores.

    An explicit ``threads`` wins; then ``FACEFLOW_THREADS``; else the cores divided between the workers
    (at least one each). ``0`` means "let the runtime decide" and is only returned when asked for.
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if threads is not None:
        if threads < 0:
            raise ConfigError(f"threads must be 0 (runtime's choice) or more, got {threads}")
        return threads
    env = os.environ.get("FACEFLOW_THREADS")
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            raise ConfigError(f"FACEFLOW_THREADS must be an integer, got {env!r}") from None
    return max(1, cpu_count() // workers)


class LazyModel(Generic[T]):
    """A value built by ``factory`` on first :meth:`get`, exactly once, thread-safely (for objects a
    stage derives from runtime models, e.g. a resolved choice between two sources)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._built = False
        self._lock = threading.Lock()

    def get(self) -> T:
        if not self._built:
            with self._lock:
                if not self._built:
                    self._value = self._factory()
                    self._built = True
        return self._value  # type: ignore[return-value]

    @property
    def loaded(self) -> bool:
        return self._built


class TFLiteModel:
    """A LiteRT interpreter with a lock around each run (interpreters are not thread-safe)."""

    def __init__(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(path), num_threads=threads or cpu_count())
        self._interp.allocate_tensors()
        self.inputs = self._interp.get_input_details()
        self.outputs = self._interp.get_output_details()
        self._lock = threading.Lock()

    def run(self, *arrays: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Feed the inputs in order; return every output in the model's order."""
        with self._lock:
            for detail, arr in zip(self.inputs, arrays, strict=True):
                if tuple(detail["shape"]) != arr.shape:
                    self._interp.resize_tensor_input(detail["index"], arr.shape)
                    self._interp.allocate_tensors()
                self._interp.set_tensor(detail["index"], arr.astype(detail["dtype"], copy=False))
            self._interp.invoke()
            return [self._interp.get_tensor(d["index"]).copy() for d in self.outputs]


def model_path(name: str, file: str | None = None, store: ModelStore | None = None) -> Path:
    """The checked local path of a registered model's file (the first unless ``file`` names one),
    fetched into the store's cache if it is missing."""
    return (store or default_store()).path(get(name), file)


def onnx_session_options(threads: int) -> Any:
    """The one ONNX Runtime session set-up faceflow uses: ``threads`` intra-op threads, one inter-op
    thread, full graph optimisation, quiet logging."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class Runtime:
    """Loaded models for one owner (an Analyzer, a server, a benchmark): built lazily, once each.

    ``threads`` is the intra-op thread count of every model (see :func:`thread_budget`, which also
    divides the cores between ``workers``). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, store: ModelStore | None = None, *, threads: int | None = None, workers: int = 1) -> None:
        self.store = store or default_store()
        self.workers = workers
        self.threads = thread_budget(threads, workers)
        self._objects: dict[tuple[Any, ...], Any] = {}
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._guard = threading.Lock()
        self._closed = False
        self._used: set[str] = set()

    # -- files ------------------------------------------------------------------------------------
    def path(self, name: str, file: str | None = None) -> Path:
        """The checked local path of a registered model's file, fetched if needed (no lock held here)."""
        found = model_path(name, file, self.store)
        self._used.add(name)
        return found

    @property
    def models_used(self) -> list[str]:
        """Names of the registered models whose files this runtime has opened (whoever built the object
        from them: a session here, or a stage's own loader such as OpenCV's YuNet)."""
        return sorted(self._used)

    # -- objects ------------------------------------------------------------------------------------
    def load(self, key: tuple[Any, ...], build: Callable[[], T]) -> T:
        """The object stored under ``key``, built by ``build`` the first time (under ``key``'s own lock)."""
        obj = self._objects.get(key)
        if obj is not None:
            return obj  # type: ignore[no-any-return]
        if self._closed:
            raise ConfigError("this runtime is closed; create a new Analyzer (or Runtime)")
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._objects:
                self._objects[key] = build()
            return self._objects[key]  # type: ignore[no-any-return]

    def onnx(self, name: str, *, taps: tuple[str, ...] = ()) -> Any:
        """An ``onnxruntime.InferenceSession`` of a registered ONNX model (no lock: ``run`` is thread-safe).

        ``taps`` names inner tensors to expose as extra outputs (for features read from a hidden layer).
        """
        def build() -> Any:
            import onnxruntime as ort

            path = self.path(name)
            graph: str | bytes = str(path)
            if taps:
                import onnx

                model = onnx.load(str(path))
                for i, tensor in enumerate(taps):
                    model.graph.output.insert(i, onnx.ValueInfoProto(name=tensor))
                graph = model.SerializeToString()
            return ort.InferenceSession(graph, sess_options=onnx_session_options(self.threads),
                                        providers=["CPUExecutionProvider"])

        return self.load(("onnx", name, taps), build)

    def tflite(self, name: str) -> TFLiteModel:
        """A LiteRT interpreter of a registered ``.tflite`` model (locked per run, see the module)."""
        return self.load(("tflite", name), lambda: TFLiteModel(self.path(name), self.threads))

    def dlib(self, name: str, kind: str) -> Any:
        """A dlib object (``kind`` is the dlib class, e.g. ``"shape_predictor"``) built from a ``.dat`` file."""
        def build() -> Any:
            import dlib

            return getattr(dlib, kind)(str(self.path(name)))

        return self.load(("dlib", name, kind), build)

    @property
    def loaded(self) -> list[str]:
        """Names of the models and objects built so far (for diagnostics and tests)."""
        return [":".join(map(str, key)) for key in self._objects]

    def close(self) -> None:
        """Drop every model (sessions free their memory when the last reference goes); idempotent."""
        self._closed = True
        with self._guard:
            self._objects.clear()
            self._locks.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The process-wide runtime used by models and stages built without one (scripts, notebooks).

    Analyzers create their own; this exists so that ``MeshStage()`` or ``create_embedder("sface")`` work
    on their own, sharing loaded models with each other.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Runtime()
        return _default
