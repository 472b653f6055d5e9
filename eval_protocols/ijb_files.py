"""Fast, strict readers and writers for the IJB-B/IJB-C meta files (insightface layout).

Every reader checks the number of fields on every line with vectorised numpy passes, then
converts all numbers at once; a malformed line raises :class:`InputError` naming the file,
the 1-based line number and the line's text. See ``REFERENCE.md`` section 2 for the layout.
"""

from __future__ import annotations

__all__ = [
    "IJB_VARIANTS",
    "MetaPaths",
    "meta_paths",
    "read_name_5pts_score",
    "read_face_tid_mid",
    "read_template_pairs",
    "read_1n_csv",
    "format_int_table",
    "write_int_table",
]

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecoreset_plugin.errors import InputError
from facecoreset_plugin.safe_io import atomic_write

#: variant -> (folder under the data root, file prefix, 1:N gallery names)
IJB_VARIANTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ijbb": ("IJBB", "ijbb", ("S1", "S2")),
    "ijbc": ("IJBC", "ijbc", ("G1", "G2")),
}



@dataclass(frozen=True)
class MetaPaths:
    """Where the meta files of one IJB variant live under a data root."""

    variant: str  # "ijbb" or "ijbc"
    meta_dir: Path  # <root>/IJBB/meta or <root>/IJBC/meta
    image_dir: Path  # <root>/IJB?/loose_crop
    face_tid_mid: Path  # image_name template_id media_id
    template_pair_label: Path  # template_id_1 template_id_2 label
    name_5pts_score: Path  # image_name x1 y1 ... x5 y5 faceness
    galleries: dict[str, Path]  # 1:N gallery name -> CSV
    probe: Path  # 1:N probe_mixed CSV


def meta_paths(root: str | Path, variant: str) -> MetaPaths:
    """Paths of the meta files of ``variant`` ("ijbb" | "ijbc") under ``root``."""
    if variant not in IJB_VARIANTS:
        raise InputError(f"unknown IJB variant {variant!r}; valid: {', '.join(IJB_VARIANTS)}")
    folder, prefix, galleries = IJB_VARIANTS[variant]
    meta = Path(root) / folder / "meta"
    return MetaPaths(
        variant=variant,
        meta_dir=meta,
        image_dir=Path(root) / folder / "loose_crop",
        face_tid_mid=meta / f"{prefix}_face_tid_mid.txt",
        template_pair_label=meta / f"{prefix}_template_pair_label.txt",
        name_5pts_score=meta / f"{prefix}_name_5pts_score.txt",
        galleries={g: meta / f"{prefix}_1N_gallery_{g}.csv" for g in galleries},
        probe=meta / f"{prefix}_1N_probe_mixed.csv",
    )


# --- low-level parsing --------------------------------------------------------------

def _read_bytes(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{what} not found: {path} (looked in {path.resolve().parent}); check --data-root and "
            "that the insightface IJB layout <root>/IJBB|IJBC/meta/ is complete"
        )
    return path.read_bytes()


def _line_text(data: bytes, starts: np.ndarray, line: int) -> str:
    begin = int(starts[line])
    end = data.find(b"\n", begin)
    text = data[begin: end if end >= 0 else len(data)].decode("utf-8", "replace").rstrip("\r")
    return text if len(text) <= 120 else text[:117] + "..."


def _checked_lines(data: bytes, ncols: int, path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate that every line has ``ncols`` whitespace-separated fields.

    ``data`` must end with a newline. Per-line field counts come from a uint8 running count of
    field starts read at the newlines (exact mod 256; the exact total rules out wrap-around).

    Returns:
        (the bytes as a uint8 array, start offsets of the lines).
    """
    import torch

    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.empty(len(newlines), dtype=np.int64)
    if len(newlines) == 0:
        return buf, starts
    starts[0] = 0
    starts[1:] = newlines[:-1] + 1
    space = buf <= 32  # space, tab, CR, LF and other control bytes separate fields
    token_start = ~space
    token_start[1:] &= space[:-1]
    del space
    total = int(np.count_nonzero(token_start))
    running = torch.cumsum(torch.from_numpy(token_start.view(np.uint8)), 0, dtype=torch.uint8).numpy()
    del token_start
    counts_mod = np.diff(running[newlines], prepend=np.uint8(0))  # uint8 arithmetic wraps like the running count
    del running
    ok = counts_mod == ncols
    if total == ncols * len(newlines) and ok.all():
        return buf, starts
    ends = newlines + 1
    counts = _count_fields(data, starts, ends, None if ok.all() else [int(np.flatnonzero(~ok)[0])])
    bad = np.flatnonzero((counts != ncols) & (counts >= 0))
    if not len(bad):
        counts = _count_fields(data, starts, ends, None)
        bad = np.flatnonzero(counts != ncols)
    if len(bad):
        line = int(bad[0])
        raise InputError(
            f"{path}:{line + 1}: malformed line in the {what}: expected {ncols} space-separated "
            f"fields, found {int(counts[line])}: {_line_text(data, starts, line)!r}"
        )
    return buf, starts


def _count_fields(data: bytes, starts: np.ndarray, ends: np.ndarray, lines: list[int] | None) -> np.ndarray:
    """Slow path for error messages: the field count of ``lines`` (all lines when None); -1 elsewhere."""
    counts = np.full(len(starts), -1, dtype=np.int64)
    if lines is None:
        counts[:] = [len(line.split()) for line in data[: int(ends[-1])].split(b"\n")[: len(starts)]]
    else:
        for i in lines:
            counts[i] = len(data[int(starts[i]): int(ends[i])].split())
    return counts


def _strip_trailing(data: bytes) -> bytes:
    """``data`` without trailing blank space, ending in one newline (copies only when needed)."""
    end = len(data)
    while end and data[end - 1] in b" \t\r\n\x0b\x0c":
        end -= 1
    if end == 0:
        return b""
    if end == len(data) - 1 and data[end] == 10:
        return data
    return data[:end] + b"\n"


def _first_bad_number_line(data: bytes, starts: np.ndarray, columns: slice, parse) -> int:
    """Slow path, only after a vectorised conversion failed: the first line that does not parse."""
    for i, line in enumerate(data.splitlines()):
        try:
            for tok in line.split()[columns]:
                parse(tok)
        except ValueError:
            return i
    return 0


def _parse_int_table(path: Path, ncols: int, what: str) -> np.ndarray:
    data = _strip_trailing(_read_bytes(path, what))
    _, starts = _checked_lines(data, ncols, path, what)
    if len(starts) == 0:
        raise InputError(f"{path}: the {what} is empty")
    try:  # fromstring refuses any token that is not an integer
        values = np.fromstring(data, dtype=np.int64, sep=" ")  # noqa: NPY201 (text mode is not deprecated)
    except ValueError:
        values = None
    if values is None or values.size != len(starts) * ncols:
        line = _first_bad_number_line(data, starts, slice(None), int)
        raise InputError(
            f"{path}:{line + 1}: malformed line in the {what}: expected {ncols} integers: "
            f"{_line_text(data, starts, line)!r}"
        )
    return values.reshape(len(starts), ncols)


def _parse_named_table(path: Path, ncols: int, what: str, dtype: type) -> tuple[list[str], np.ndarray]:
    """Lines of ``name v1 ... v{ncols-1}``: the names and the numbers as ``dtype``."""
    data = _strip_trailing(_read_bytes(path, what))
    _, starts = _checked_lines(data, ncols, path, what)
    if len(starts) == 0:
        raise InputError(f"{path}: the {what} is empty")
    tokens = data.split()
    names = [t.decode("utf-8", "replace") for t in tokens[0::ncols]]
    del tokens[0::ncols]
    try:
        raw = np.array(tokens)
        values = raw.astype(np.float64).astype(dtype) if dtype is np.float32 else raw.astype(dtype)
    except ValueError:
        parse = float if dtype is np.float32 else int
        line = _first_bad_number_line(data, starts, slice(1, None), parse)
        kind = "numbers" if dtype is np.float32 else "integers"
        raise InputError(
            f"{path}:{line + 1}: malformed line in the {what}: expected an image name and "
            f"{ncols - 1} {kind}: {_line_text(data, starts, line)!r}"
        ) from None
    return names, values.reshape(len(names), ncols - 1)


# --- public readers -------------------------------------------------------------------

def read_name_5pts_score(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read ``*_name_5pts_score.txt``.

    Returns:
        (image names [M], landmarks float32 [M,5,2] in loose-crop pixels, faceness float32 [M]).

    Raises:
        InputError: missing file or a malformed line (file and line number in the message).
    """
    names, values = _parse_named_table(Path(path), 12, "5-landmark/faceness file", np.float32)
    if not np.isfinite(values).all():
        line = int(np.flatnonzero(~np.isfinite(values).all(1))[0])
        raise InputError(f"{path}:{line + 1}: NaN or Inf in landmarks/faceness of {names[line]!r}")
    return names, np.ascontiguousarray(values[:, :10].reshape(-1, 5, 2)), np.ascontiguousarray(values[:, 10])


def read_face_tid_mid(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read ``*_face_tid_mid.txt``: (image names [M], template ids int64 [M], media ids int64 [M])."""
    names, values = _parse_named_table(Path(path), 3, "image/template/media file", np.int64)
    return names, np.ascontiguousarray(values[:, 0]), np.ascontiguousarray(values[:, 1])


def read_template_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``*_template_pair_label.txt``: (template id 1 [P], template id 2 [P], label int8 [P]).

    Raises:
        InputError: missing file, malformed line, or a label other than 0/1.
    """
    table = _parse_int_table(Path(path), 3, "template pair file")
    labels = table[:, 2]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        line = int(bad[0])
        raise InputError(f"{path}:{line + 1}: label must be 1 (genuine) or 0 (impostor), got {int(labels[line])}")
    return np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1]), labels.astype(np.int8)


def read_1n_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 1:N gallery or probe CSV (header row; TEMPLATE_ID, SUBJECT_ID first).

    Returns:
        (distinct template ids int64 [T] in first-seen order, their subject ids int64 [T]).

    Raises:
        InputError: missing file, malformed row, or a template listed under two subjects.
    """
    path = Path(path)
    text = _read_bytes(path, "1:N CSV").decode("utf-8", "replace")
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        raise InputError(f"{path}: the 1:N CSV is empty (expected a header row and TEMPLATE_ID,SUBJECT_ID rows)")
    subject_of: dict[int, int] = {}
    for lineno, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            tid, sid = int(row[0]), int(row[1])
        except (ValueError, IndexError):
            raise InputError(
                f"{path}:{lineno}: malformed row in the 1:N CSV: expected integer TEMPLATE_ID,SUBJECT_ID "
                f"first, got {','.join(row)[:120]!r}"
            ) from None
        prev = subject_of.setdefault(tid, sid)
        if prev != sid:
            raise InputError(f"{path}:{lineno}: template {tid} listed under subjects {prev} and {sid}")
    if not subject_of:
        raise InputError(f"{path}: the 1:N CSV has a header but no rows")
    tids = np.fromiter(subject_of.keys(), dtype=np.int64, count=len(subject_of))
    sids = np.fromiter(subject_of.values(), dtype=np.int64, count=len(subject_of))
    return tids, sids


# --- fast writers (used by the synthetic protocol) ----------------------------------

def format_int_table(columns: list[np.ndarray], seps: list[bytes] | None = None,
                     min_widths: list[int] | None = None) -> bytes:
    """Format non-negative integer columns as text lines, vectorised (no Python loop per line).

    Args:
        columns: equal-length integer arrays.
        seps: bytes written after each column (default: a space, and a newline after the last).
        min_widths: zero-padded minimum digit counts per column (default 1).
    """
    cols = [np.asarray(c, dtype=np.int64).ravel() for c in columns]
    seps = seps or [b" "] * (len(cols) - 1) + [b"\n"]
    min_widths = min_widths or [1] * len(cols)
    n = len(cols[0])
    if n == 0:
        return b""
    if any(len(c) != n for c in cols) or any(int(c.min()) < 0 for c in cols) or len(seps) != len(cols):
        raise ValueError("columns must have equal lengths and non-negative values, with one separator each")
    widths = []
    for c, mw in zip(cols, min_widths):
        w = np.ones(n, dtype=np.int64)
        for k in range(1, 19):
            more = c >= 10 ** k
            if not more.any():
                break
            w += more
        widths.append(np.maximum(w, mw))
    line_len = sum(widths) + sum(len(s) for s in seps)
    ends = np.cumsum(line_len)
    buf = np.full(int(ends[-1]), 48, dtype=np.uint8)  # '0' pads the zero-padded columns
    pos = ends - line_len
    for c, w, sep in zip(cols, widths, seps):
        last = pos + w - 1
        v = c.copy()
        for k in range(int(w.max())):
            active = w > k
            buf[(last - k)[active]] = (48 + v[active] % 10).astype(np.uint8)
            v //= 10
        for j, byte in enumerate(sep):
            buf[pos + w + j] = byte
        pos = pos + w + len(sep)
    return buf.tobytes()


def write_int_table(path: str | Path, columns: list[np.ndarray], seps: list[bytes] | None = None,
                    min_widths: list[int] | None = None, header: bytes = b"", chunk: int = 2_000_000) -> None:
    """Atomically write integer columns as a text file (see :func:`format_int_table`)."""
    n = len(columns[0])
    with atomic_write(path) as fh:
        fh.write(header)
        for start in range(0, n, chunk):
            fh.write(format_int_table([np.asarray(c)[start:start + chunk] for c in columns], seps, min_widths))
