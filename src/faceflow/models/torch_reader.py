"""Read a pickled PyTorch module without torch: a restricted unpickler that turns tensors into numpy
arrays and modules into plain attribute holders.

Only the legacy serialisation (``torch.save(..., _use_new_zipfile_serialization=False)``: a magic
number, a protocol version, system info, the object pickle, the list of storage keys, then each
storage as an int64 element count and its raw little-endian bytes) is read; that is what the
checkpoints faceflow converts use, either a whole pickled module (:func:`load_legacy_module`) or a
``state_dict`` (:func:`load_legacy_state_dict`). The object pickle may name only the globals in
:data:`_FUNCTIONS` and :data:`_STORAGES`, and classes under the module prefixes the caller allows
(``torch.nn.modules.`` and the architecture's own module); any other global is refused with
:class:`~faceflow.errors.CheckpointError` before anything is built, so a hostile file cannot run code.
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import CheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGES: dict[str, Any] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}
"""``torch <name>`` storage classes and the numpy type of their elements."""


class Storage:
    """A storage named in the pickle; its values are read after the pickle (:attr:`array`)."""

    def __init__(self, dtype: Any, numel: int) -> None:
        self.dtype = np.dtype(dtype)
        self.numel = numel
        self.array: npt.NDArray[Any] | None = None


class Tensor:
    """A tensor of the pickle: a strided view of a :class:`Storage`, materialised by :meth:`numpy`."""

    def __init__(self, storage: Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def numpy(self) -> npt.NDArray[Any]:
        """A contiguous copy of the tensor's values."""
        data = self.storage.array
        if data is None:
            raise CheckpointError("tensor read before its storage")
        itemsize = data.dtype.itemsize
        end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if self.size and (self.offset < 0 or end > data.size):
            raise CheckpointError(f"tensor of size {self.size} runs past its storage of {data.size} elements")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.array(view, copy=True)


class Module:
    """A pickled ``nn.Module``: its pickled state as attributes, its class path in :attr:`type_name`."""

    type_name = ""
    _modules: dict[str, Module]
    _parameters: dict[str, Tensor | None]
    _buffers: dict[str, Tensor | None]

    def children(self) -> Iterator[tuple[str, Module]]:
        yield from getattr(self, "_modules", {}).items()

    def tensors(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """Every parameter and buffer below this module, by its ``state_dict`` name."""
        for table in ("_parameters", "_buffers"):
            for name, t in getattr(self, table, {}).items():
                if t is not None:
                    yield prefix + name, t
        for name, child in self.children():
            yield from child.tensors(f"{prefix}{name}.")


def _rebuild_tensor_v2(storage: Storage, offset: int, size: Any, stride: Any, *_: Any) -> Tensor:
    if not isinstance(storage, Storage):
        raise CheckpointError(f"a tensor's storage is a {type(storage).__name__}")
    return Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Tensor, *_: Any) -> Tensor:
    if not isinstance(data, Tensor):
        raise CheckpointError(f"a parameter holds a {type(data).__name__}, not a tensor")
    return data


def _backend(*_: Any) -> None:
    return None


_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _backend,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: IO[bytes], module_prefixes: tuple[str, ...]) -> None:
        super().__init__(fh)
        self.prefixes = module_prefixes
        self.storages: dict[str, Storage] = {}
        self.classes: dict[str, type[Module]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        if module.startswith(self.prefixes) and name.isidentifier() and not name.startswith("_"):
            path = f"{module}.{name}"
            if path not in self.classes:
                self.classes[path] = type(name, (Module,), {"type_name": path})
            return self.classes[path]
        raise CheckpointError(f"checkpoint names a global faceflow does not allow: {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # A module class with its source code (for torch's change warnings): the class stands.
            if not (isinstance(pid[1], type) and issubclass(pid[1], Module)):
                raise CheckpointError(f"unsupported module record in checkpoint: {pid[1]!r:.80}")
            return pid[1]
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"unsupported persistent id in checkpoint: {pid!r:.80}")
        _, dtype, key, _location, numel, view = pid
        if view is not None:
            raise CheckpointError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = Storage(dtype, int(numel))
        return self.storages[key]


def _load_legacy(path: Path | str, module_prefixes: tuple[str, ...], expect: type, what: str) -> Any:
    """The object pickled in a legacy-format PyTorch file (which must be an ``expect``), with every
    tensor's storage read after it."""
    with open(path, "rb") as fh:
        try:
            magic, protocol = pickle.load(fh), pickle.load(fh)
            if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
                raise CheckpointError(f"{path}: not a legacy PyTorch checkpoint (magic {magic!r:.40})")
            info = pickle.load(fh)
            if not isinstance(info, dict) or not info.get("little_endian", False):
                raise CheckpointError(f"{path}: only little-endian checkpoints are supported")
            unpickler = _Unpickler(fh, module_prefixes)
            root = unpickler.load()
            keys = pickle.load(fh)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
        if not isinstance(root, expect):
            raise CheckpointError(f"{path}: the checkpoint holds {type(root).__name__}, not {what}")
        for key in keys:
            storage = unpickler.storages.get(key) if isinstance(key, str) else None
            if storage is None:
                raise CheckpointError(f"{path}: storage {key!r:.40} is listed but no tensor uses it")
            header = fh.read(8)
            if len(header) != 8:
                raise CheckpointError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", header)
            nbytes = numel * storage.dtype.itemsize
            raw = fh.read(nbytes)
            if numel != storage.numel or len(raw) != nbytes:
                raise CheckpointError(
                    f"{path}: storage {key} holds {len(raw)} bytes, expected {storage.numel} elements"
                )
            storage.array = np.frombuffer(raw, storage.dtype.newbyteorder("<"))
    return root


def load_legacy_module(path: Path | str, module_prefixes: tuple[str, ...]) -> Module:
    """The module pickled in a legacy-format PyTorch file, with every tensor's values read.

    ``module_prefixes`` are the module paths whose classes may appear (as :class:`Module` holders).
    Raises :class:`~faceflow.errors.CheckpointError` for any other format, a refused global or a short file.
    """
    root: Module = _load_legacy(path, module_prefixes, Module, "a module")
    return root


def load_legacy_state_dict(path: Path | str) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a legacy-format PyTorch file that holds a ``state_dict`` (an ordered mapping of
    names to tensors), as numpy arrays by name. No module class may appear in it; any global but
    those of :data:`_FUNCTIONS` and the storages is refused with :class:`~faceflow.errors.CheckpointError`."""
    root = _load_legacy(path, (), dict, "a state_dict")
    out: dict[str, npt.NDArray[Any]] = {}
    for name, value in root.items():
        if not isinstance(name, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: state_dict entry {name!r:.60} is not a named tensor")
        out[name] = value.numpy()
    return out


def state_dict(module: Module) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of ``module`` by its ``state_dict`` name, as numpy arrays."""
    return {name: t.numpy() for name, t in module.tensors()}
