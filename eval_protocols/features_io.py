"""Per-image feature files: FaceCoresetNet pickle, ``.npz`` and ``.safetensors``, one layout.

Keys (all formats): ``img_feats`` [M,D] float32 unit rows (row i = line i of the meta files),
``norms`` [M,1] or [M] float32 (the backbone's feature norms, the quality signal),
``faceness_scores`` [M] float32 (optional detector scores). Rows that are not unit length are
normalised and their length is taken as the norm when ``norms`` is absent.
"""

from __future__ import annotations

__all__ = ["ImageFeatures", "read_features", "write_features", "read_array_file", "FEATURE_SUFFIXES", "ARRAY_SUFFIXES"]

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecoreset_plugin.errors import InputError
from facecoreset_plugin.safe_io import atomic_write, safe_pickle_load

FEATURE_SUFFIXES = (".pkl", ".pickle", ".npz", ".safetensors")
ARRAY_SUFFIXES = (".npz", ".safetensors")  # what read_array_file reads


@dataclass
class ImageFeatures:
    """Per-image features aligned with the protocol's image list."""

    features: np.ndarray  # [M,D] float32 unit rows
    norms: np.ndarray  # [M] float32 feature norms (> 0)
    faceness: np.ndarray | None = None  # [M] float32 detector scores, None when the file has none

    @property
    def num_images(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def read_array_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of a ``.npz`` or ``.safetensors`` file, never unpickling anything.

    Args:
        path: an existing ``.npz`` (``np.savez``/``np.savez_compressed``) or ``.safetensors`` file.

    Returns:
        ``{name: array}`` for each stored array.

    Raises:
        InputError: another suffix, or a corrupt, truncated or pickled file (message names the file).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".safetensors":
        import torch
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:  # SafetensorError (bad header, truncated), OSError
            raise InputError(f"{path}: not a readable .safetensors file ({type(exc).__name__}: {exc}); "
                             "re-save it with safetensors' save_file") from exc
        numpy_floats = (torch.float16, torch.float32, torch.float64)
        # bfloat16/float8 have no numpy dtype: widen them to float32 (exact)
        return {k: (t.float() if t.is_floating_point() and t.dtype not in numpy_floats else t).numpy()
                for k, t in tensors.items()}
    raise InputError(f"{path}: unsupported array file suffix {suffix!r}; use .npz or .safetensors")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a readable .npz file (not a zip archive); re-save it with numpy.savez")
    try:
        fast = _read_stored_npz(path)
        if fast is not None:
            return fast
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc):  # object arrays: loading them would unpickle, refused
            raise InputError(f"{path}: unreadable .npz without pickle ({exc}); "
                             "re-save plain numeric arrays with numpy.savez") from exc
        raise InputError(f"{path}: not a readable .npz file (ValueError: {exc}); re-save it with numpy.savez") from exc
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError
        raise InputError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); "
                         "re-save it with numpy.savez") from exc


def _load_mapping(path: Path) -> dict:
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        obj = safe_pickle_load(path)  # refuses anything but containers and numpy arrays
        if not isinstance(obj, dict):
            raise InputError(f"{path}: expected a dict with 'img_feats', 'norms', 'faceness_scores', got {type(obj).__name__}")
        return obj
    if suffix in ARRAY_SUFFIXES:
        return read_array_file(path)
    raise InputError(f"{path}: unsupported feature file suffix {suffix!r}; use one of {', '.join(FEATURE_SUFFIXES)}")


def _read_stored_npz(path: Path) -> dict | None:
    """Read an uncompressed ``.npz`` (``np.savez``) with one ``np.fromfile`` per member.

    Skips zipfile's chunked reads (much faster for GB-sized feature files) but still checks
    each member's CRC.
    Returns None (use ``np.load``) for compressed members, object dtypes or anything unusual.
    """
    import struct
    import zipfile
    import zlib

    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                return None
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    return None
            except ValueError:
                return None
            if dtype.hasobject or fortran:
                return None
            count = int(np.prod(shape))
            start = fh.tell()
            if start - (info.header_offset + 30 + name_len + extra_len) + count * dtype.itemsize != info.file_size:
                return None
            data_start = info.header_offset + 30 + name_len + extra_len
            arr = np.fromfile(fh, dtype=dtype, count=count)
            if arr.size != count:  # cut short: let np.load report it
                return None
            fh.seek(data_start)
            crc = zlib.crc32(arr, zlib.crc32(fh.read(start - data_start)))
            if crc != info.CRC:  # damaged bytes would otherwise be silently wrong features
                raise InputError(f"{path}: member {info.filename!r} is damaged (CRC mismatch); "
                                 "re-create or re-download the file")
            arr = arr.reshape(shape)
            out[info.filename[:-4]] = arr
    return out


def _as_array(obj: object, key: str, path: Path) -> np.ndarray:
    if not isinstance(obj, np.ndarray) or obj.dtype.kind not in "fiu":
        raise InputError(f"{path}: {key!r} must be a numeric array, got {type(obj).__name__}")
    return obj


def _bad_rows_message(path: Path, what: str, rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
    return (
        f"{path}: {len(rows)} feature row(s) with {what} (0-based rows {shown}; row i is line i+1 of the "
        "*_name_5pts_score.txt file). Re-extract those images (a failed crop or detector miss); the "
        "runner never drops rows silently because that would misalign every later template."
    )


def read_features(path: str | Path, expected_rows: int | None = None) -> ImageFeatures:
    """Read a feature file and check it.

    Args:
        path: ``.pkl`` (FaceCoresetNet), ``.npz`` or ``.safetensors``.
        expected_rows: the number of images of the protocol, checked when given.

    Raises:
        InputError: missing file or key, wrong shapes, row-count mismatch, NaN/Inf or zero rows.
        UnsafeFileError: a pickle that references anything but plain containers/numpy arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"feature file not found: {path} (looked in {path.resolve().parent}); check --features")
    data = _load_mapping(path)
    if "img_feats" not in data:
        keys = ", ".join(map(repr, data)) or "none"
        raise InputError(f"{path}: missing key 'img_feats' (keys found: {keys}); expected img_feats, norms, faceness_scores")
    feats = _as_array(data["img_feats"], "img_feats", path)
    if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
        raise InputError(f"{path}: 'img_feats' must be [M,D], got shape {feats.shape}")
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    m = feats.shape[0]
    if expected_rows is not None and m != expected_rows:
        raise InputError(
            f"{path}: {m} feature rows but the protocol lists {expected_rows} images; the features must "
            "have one row per line of *_name_5pts_score.txt, in that order (wrong file or protocol?)"
        )
    import torch

    # one multi-threaded pass: NaN/Inf anywhere in a row makes its length non-finite
    lengths = torch.linalg.vector_norm(torch.from_numpy(feats), dim=1).numpy()
    finite = np.isfinite(lengths)
    if not finite.all():
        raise InputError(_bad_rows_message(path, "NaN or Inf", np.flatnonzero(~finite)))
    zero = ~(lengths > 1e-12)
    if zero.any():
        raise InputError(_bad_rows_message(path, "zero length", np.flatnonzero(zero)))
    if "norms" in data:
        norms = _as_array(data["norms"], "norms", path)
        if norms.ndim == 2 and norms.shape[1] == 1:
            norms = norms[:, 0]
        if norms.shape != (m,):
            raise InputError(f"{path}: 'norms' must be [M] or [M,1] with M={m}, got shape {norms.shape}")
        norms = np.ascontiguousarray(norms, dtype=np.float32)
        bad = ~(np.isfinite(norms) & (norms > 0))
        if bad.any():
            raise InputError(_bad_rows_message(path, "a NaN, Inf, zero or negative norm", np.flatnonzero(bad)))
    else:
        norms = lengths
    if np.abs(lengths - 1.0).max() > 1e-3:
        feats /= lengths[:, None]
    faceness = None
    if "faceness_scores" in data:
        faceness = np.asarray(_as_array(data["faceness_scores"], "faceness_scores", path), dtype=np.float32).reshape(-1)
        if faceness.shape != (m,):
            raise InputError(f"{path}: 'faceness_scores' must be [M] with M={m}, got shape {faceness.shape}")
        if not np.isfinite(faceness).all():
            raise InputError(_bad_rows_message(path, "NaN or Inf faceness", np.flatnonzero(~np.isfinite(faceness))))
    return ImageFeatures(feats, norms, faceness)


def write_features(path: str | Path, features: np.ndarray, norms: np.ndarray,
                   faceness: np.ndarray | None = None) -> Path:
    """Atomically write features as ``.npz`` or ``.safetensors`` (by suffix), in the read layout.

    ``norms`` is stored as [M,1] (FaceCoresetNet's layout); ``faceness`` as ``faceness_scores``.
    """
    path = Path(path)
    features = np.ascontiguousarray(features, dtype=np.float32)
    arrays = {"img_feats": features, "norms": np.ascontiguousarray(np.asarray(norms, np.float32).reshape(-1, 1))}
    if faceness is not None:
        arrays["faceness_scores"] = np.ascontiguousarray(np.asarray(faceness, np.float32).reshape(-1))
    m = features.shape[0]
    if arrays["norms"].shape[0] != m or ("faceness_scores" in arrays and arrays["faceness_scores"].shape[0] != m):
        raise InputError(f"write_features: norms/faceness must have {m} rows like the features")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with atomic_write(path) as fh:
            np.savez(fh, **arrays)
    elif suffix == ".safetensors":
        from safetensors.numpy import save

        with atomic_write(path) as fh:
            fh.write(save(arrays))
    else:
        raise InputError(f"write_features: unsupported suffix {suffix!r} for {path}; use .npz or .safetensors")
    return path
