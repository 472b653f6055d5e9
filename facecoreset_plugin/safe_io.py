"""Reading untrusted pickles and torch checkpoints without executing code; atomic writes.

Two readers built on one restricted unpickler:

* :func:`safe_pickle_load` reads pickles of plain containers and numpy arrays (the feature
  files papers ship) and refuses anything else with :class:`UnsafeFileError`.
* :func:`safe_torch_load` reads ``torch.save`` zip archives (Lightning ``.ckpt`` included)
  with its own tensor rebuilding; objects it does not know (a Lightning ``hyper_parameters``
  namespace, say) become inert :class:`OpaqueObject` placeholders, never constructed.
"""

from __future__ import annotations

__all__ = [
    "OpaqueObject",
    "safe_pickle_load",
    "safe_torch_load",
    "atomic_write",
]

import contextlib
import io
import os
import pickle
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from .errors import CheckpointError, UnsafeFileError

_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "bytearray": bytearray, "slice": slice}


class OpaqueObject:
    """Stand-in for a pickled object of a class the safe readers do not construct."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<opaque {self._qualname}>"


def _opaque(module: str, name: str) -> type:
    return type(f"Opaque_{name}", (OpaqueObject,), {"_qualname": f"{module}.{name}"})


def _numpy_global(module: str, name: str) -> Any:
    if module in {"numpy.core.multiarray", "numpy._core.multiarray"} and name in {"_reconstruct", "scalar"}:
        import numpy

        core = getattr(numpy, "_core", None) or numpy.core
        return getattr(core.multiarray, name)
    if module in {"numpy.core.numeric", "numpy._core.numeric"} and name == "_frombuffer":
        import numpy

        core = getattr(numpy, "_core", None) or numpy.core
        return core.numeric._frombuffer
    if module == "numpy" and name in {"ndarray", "dtype"}:
        import numpy

        return getattr(numpy, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        import numpy.dtypes

        return getattr(numpy.dtypes, name)
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only an allow-list of globals; others raise or become opaque placeholders."""

    def __init__(self, file: Any, *, source: str, strict: bool, extra: dict[tuple[str, str], Any] | None = None,
                 persistent_load: Any = None) -> None:
        super().__init__(file)
        self._source = source
        self._strict = strict
        self._extra = extra or {}
        self._persistent = persistent_load
        self.opaque_names: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # pickle protocol <= 2 names (what fix_imports maps)
            module = "builtins"
        if (module, name) in self._extra:
            return self._extra[(module, name)]
        if module == "builtins" and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "_codecs" and name == "encode":  # bytes in pickle protocol 2
            import codecs

            return codecs.encode
        found = _numpy_global(module, name)
        if found is not None:
            return found
        if self._strict:
            raise UnsafeFileError(
                f"{self._source}: refusing to load: the pickle references {module}.{name}, which "
                "could run code. Only plain containers and numpy arrays are accepted; re-save the "
                "data as .npz or .safetensors."
            )
        self.opaque_names.add(f"{module}.{name}")
        return _opaque(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafeFileError(f"{self._source}: unexpected persistent reference in a plain pickle")
        return self._persistent(pid)


def safe_pickle_load(path: str | os.PathLike) -> Any:
    """Load a pickle that holds only plain containers, numbers, strings and numpy arrays.

    Raises:
        UnsafeFileError: the pickle references any other global (its payload never runs).
        FileNotFoundError: no such file.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            return _RestrictedUnpickler(fh, source=str(path), strict=True).load()
        except UnsafeFileError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise UnsafeFileError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


# --- torch zip archives ---------------------------------------------------------------

def _storage_dtypes() -> dict[str, Any]:
    import torch

    return {
        "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
        "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
        "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
        "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
        "ComplexDoubleStorage": torch.complex128,
    }


class _StorageType:
    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> Any:
    import torch

    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("checkpoint tensor without storage")
    if len(size) == 0:
        return storage[offset].clone()
    return torch.as_strided(storage, size, stride, offset).clone()


def _rebuild_parameter(data: Any, requires_grad: bool = False, *_: Any) -> Any:
    return data


def safe_torch_load(path: str | os.PathLike) -> tuple[Any, set[str]]:
    """Read a ``torch.save`` zip archive on CPU without executing code from it.

    Returns:
        (the unpickled object with tensors rebuilt, qualified names of the classes that were
        replaced by :class:`OpaqueObject` placeholders).

    Raises:
        CheckpointError: the file is missing, not a torch zip archive, or damaged.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (looked in {path.resolve().parent})")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch zip checkpoint (legacy pre-1.6 torch files and other formats "
            "are not read); re-save it with a current torch.save"
        )
    storage_types = _storage_dtypes()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{path}: zip archive without data.pkl; not a torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode().strip()
        if byteorder != sys.byteorder:
            raise CheckpointError(f"{path}: saved with {byteorder}-endian storages; not supported here")
        cache: dict[str, Any] = {}

        def load_storage(pid: Any) -> Any:
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                raise CheckpointError(f"{path}: unsupported persistent id {pid!r}")
            storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
            if key not in cache:
                dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else torch.uint8
                raw = bytearray(zf.read(f"{prefix}data/{key}"))
                flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
                cache[key] = flat.view(dtype) if dtype != torch.uint8 else flat
            return cache[key]

        extra: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch", "Size"): tuple,
        }
        for sname, dtype in storage_types.items():
            extra[("torch", sname)] = _StorageType(dtype)
        extra[("torch.storage", "UntypedStorage")] = _StorageType(torch.uint8)
        for dname in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"):
            extra[("torch", dname)] = getattr(torch, dname)
        unpickler = _RestrictedUnpickler(
            io.BytesIO(zf.read(pkl[0])), source=str(path), strict=False, extra=extra, persistent_load=load_storage
        )
        try:
            obj = unpickler.load()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from exc
    return obj, unpickler.opaque_names


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary file beside ``path`` and rename it into place on success only.

    An exception or interruption inside the block leaves any previous ``path`` untouched and
    no half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
