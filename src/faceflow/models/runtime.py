"""Loading model files into runtimes (ONNX Runtime, LiteRT/TFLite, dlib): lazily, once per process.

``LazyModel`` builds its object on first use behind a lock, so one analysis object can be shared
between threads and a model that is never used is never loaded (or downloaded).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy.typing as npt

from faceflow.models.registry import get
from faceflow.models.store import ModelStore, default_store

T = TypeVar("T")


def default_threads() -> int:
    """Intra-op threads per model: ``FACEFLOW_THREADS``, else every core (0 lets the runtime decide)."""
    value = os.environ.get("FACEFLOW_THREADS")
    return int(value) if value else 0


class LazyModel(Generic[T]):
    """A value built by ``factory`` on first :meth:`get`, exactly once, thread-safely."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
        return self._value

    @property
    def loaded(self) -> bool:
        return self._value is not None


_shared: dict[tuple[Any, ...], Any] = {}
_shared_lock = threading.Lock()


def _shared_instance(key: tuple[Any, ...], build: Callable[[], T]) -> T:
    """One instance per key in the whole process (two analysers share one loaded model)."""
    with _shared_lock:
        if key not in _shared:
            _shared[key] = build()
        return _shared[key]  # type: ignore[no-any-return]


def model_path(name: str, file: str | None = None, store: ModelStore | None = None) -> Path:
    """The checked local path of a registered model's file, fetched if needed."""
    return (store or default_store()).path(get(name), file)


def onnx_session(name: str, *, threads: int | None = None, store: ModelStore | None = None) -> Any:
    """A shared ``onnxruntime.InferenceSession`` for a registered ONNX model (its ``run`` is thread-safe)."""
    path = model_path(name, store=store)
    n = default_threads() if threads is None else threads

    def build() -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    return _shared_instance(("onnx", str(path), n), build)


class TFLiteModel:
    """A LiteRT interpreter with a lock around ``invoke`` (interpreters are not thread-safe)."""

    def __init__(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(path), num_threads=threads or (os.cpu_count() or 1))
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


def tflite_model(name: str, *, threads: int | None = None, store: ModelStore | None = None) -> TFLiteModel:
    path = model_path(name, store=store)
    n = default_threads() if threads is None else threads
    return _shared_instance(("tflite", str(path), n), lambda: TFLiteModel(path, n))


def dlib_object(name: str, kind: str, *, store: ModelStore | None = None) -> Any:
    """A shared dlib object built from a registered ``.dat`` file (``kind`` is the dlib class name)."""
    path = model_path(name, store=store)

    def build() -> Any:
        import dlib

        return getattr(dlib, kind)(str(path))

    return _shared_instance(("dlib", kind, str(path)), build)
