"""Resumable per-image feature extraction for IJB-B/C: images + backbone -> the runner's ``.npz``.

Work is split into fixed chunks of consecutive images; each finished chunk is written atomically
to ``<output>.parts/``, so a rerun after an interruption skips it. Under ``torchrun`` the chunks
are shared round-robin among the ranks and rank 0 merges after a barrier. The final file holds
``img_feats`` float32 [M,D] (unit rows, 5pts-file order), ``norms`` float32 [M,1] and
``faceness_scores`` float32 [M]; a sidecar ``<output>.extract.json`` records how it was made so a
matching rerun returns it at once (the cache ``facecoreset eval --backbone`` relies on; the record names
the resolved data root and the 5pts file's size and mtime, so other data are never served from it).
"""

from __future__ import annotations

__all__ = [
    "extract_features",
    "chunk_bounds",
    "shard_chunks",
    "batches_for_chunks",
    "merge_chunks",
    "write_feature_file",
]

import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import FacecoresetError, InputError
from ..safe_io import atomic_write
from .base import split_norm

SETTINGS_FILE = "settings.json"


# --- functional core -------------------------------------------------------------------------

def chunk_bounds(n_images: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(n_images)`` in chunks of ``chunk_size``."""
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(s, min(s + chunk_size, n_images)) for s in range(0, n_images, chunk_size)]


def shard_chunks(n_chunks: int, rank: int, world_size: int) -> list[int]:
    """Chunk ids rank ``rank`` of ``world_size`` computes (round-robin, so loads stay balanced)."""
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} outside world size {world_size}")
    return list(range(rank, n_chunks, world_size))


def batches_for_chunks(bounds: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Index batches that never cross a chunk boundary (same batches whatever was done before)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return [list(range(b, min(b + batch_size, e))) for s, e in bounds for b in range(s, e, batch_size)]


def chunk_path(parts: Path, start: int, end: int) -> Path:
    """File of the finished chunk ``[start, end)``."""
    return parts / f"chunk_{start:09d}_{end:09d}.npy"


def merge_chunks(parts: Path, bounds: Sequence[tuple[int, int]]) -> np.ndarray:
    """Concatenate the raw embeddings of all chunks in order, checking each one's row count."""
    blocks = []
    for s, e in bounds:
        path = chunk_path(parts, s, e)
        if not path.is_file():
            raise InputError(f"{path} missing: extraction of images {s}..{e - 1} did not finish; rerun extract")
        block = np.load(path, allow_pickle=False)
        if block.ndim != 2 or len(block) != e - s:
            raise InputError(f"{path}: holds {block.shape}, expected {e - s} rows; delete it and rerun extract")
        blocks.append(block)
    return np.concatenate(blocks, axis=0).astype(np.float32, copy=False)


def write_feature_file(output: Path, raw: np.ndarray, faceness: np.ndarray) -> Path:
    """Write the runner's feature file (unit rows, norms, faceness) atomically."""
    unit, norms = split_norm(torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)))
    feats = unit.numpy().astype(np.float32)
    norms_np = norms.numpy().astype(np.float32)
    face = np.asarray(faceness, dtype=np.float32).reshape(-1)
    from eval_protocols.features_io import write_features

    write_features(output, feats, norms_np, face)
    return output


# --- stateful shell --------------------------------------------------------------------------

def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _settings(protocol: str, data_root: str | Path, meta_file: Path, n_images: int, backbone: Any,
              checkpoint: str | None, flip: bool, amp: bool, chunk_size: int,
              backbone_config: dict[str, Any]) -> dict[str, Any]:
    name = backbone if isinstance(backbone, str) else f"{backbone.__module__}.{backbone.__qualname__}"
    ckpt: dict[str, Any] | None = None
    if checkpoint is not None:
        p = Path(checkpoint)
        if not p.is_file():
            raise InputError(f"--checkpoint {checkpoint} not found")
        st = p.stat()
        ckpt = {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    meta = meta_file.stat()
    return {
        "protocol": protocol.lower(), "n_images": n_images, "backbone": name, "checkpoint": ckpt,
        "data_root": str(Path(data_root).resolve()),
        "name_5pts": {"size": meta.st_size, "mtime_ns": meta.st_mtime_ns},
        "backbone_config": {k: repr(v) for k, v in sorted(backbone_config.items())},
        "flip": bool(flip), "amp": bool(amp), "chunk_size": int(chunk_size),
    }


def _worker_message(exc: BaseException) -> str:
    """The original one-line message of an error torch re-raised from a DataLoader worker.

    Torch rebuilds the error with "Caught X in DataLoader worker ... Original Traceback ..." as its
    message; the user's message is what follows ``<module>.<Class>: `` on the traceback's last line.
    """
    text = str(exc)
    if "Traceback (most recent call last)" not in text:
        return text
    cls = type(exc)
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    at = text.rfind(marker)
    if at >= 0:
        return text[at + len(marker):].strip()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].partition(": ")[2].strip() or lines[-1].strip()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _iter_batches(loader: Iterator[tuple[torch.Tensor, torch.Tensor]], backbone: Any, device: torch.device,
                  flip: bool, amp: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    for idx, imgs in loader:
        imgs = imgs.to(device, non_blocking=True)
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp else nullcontext()
        with torch.inference_mode(), ctx:
            raw = backbone.embed_images(imgs, flip=flip)
        yield idx.numpy(), raw.float().cpu().numpy()


def extract_features(
    protocol: str,
    data_root: str | Path,
    backbone: str | Callable[..., Any],
    checkpoint: str | None,
    output: Path,
    flip: bool = False,
    device: str = "cpu",
    batch_size: int = 64,
    amp: bool = False,
    workers: int = 2,
    progress: bool = True,
    *,
    chunk_size: int = 4096,
    backbone_config: dict[str, Any] | None = None,
    overwrite: bool = False,
    on_chunk_written: Callable[[int], None] | None = None,
) -> Path:
    """Extract per-image features of an IJB protocol from its loose crops, resumably.

    Args:
        protocol: ``"ijbb"`` or ``"ijbc"``.
        data_root: folder holding ``IJBB/`` / ``IJBC/`` (``meta/`` and ``loose_crop/``).
        backbone: a registered backbone name (``"ir_101"``, ``"timm:resnet50"``) or a factory.
        checkpoint: backbone weights, or None for random weights (tests only).
        output: the ``.npz`` to write.
        flip: add the embedding of the mirrored image to each embedding (flip fusion).
        device: ``cpu``, ``cuda``, ``cuda:N``; under ``torchrun`` ``cuda`` means the local rank's GPU.
        batch_size: images per forward pass.
        amp: autocast (float16 on CUDA, bfloat16 on CPU).
        workers: DataLoader worker processes decoding and aligning images.
        progress: show a progress bar (rank 0).
        chunk_size: images per resumable chunk.
        backbone_config: options passed to the backbone factory.
        overwrite: discard an existing output or unfinished run made with other settings.
        on_chunk_written: called with the chunk id after each chunk is saved (a test hook).

    Returns:
        ``output``, complete and readable by the IJB runner.
    """
    from .._factory import load_backbone
    from .images import AlignedFaces, read_5pts

    if workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    output = Path(output)
    if output.suffix.lower() not in (".npz", ".safetensors"):
        raise InputError(f"--output {output}: the feature file must end in .npz or .safetensors")
    config = dict(backbone_config or {})
    images = read_5pts(protocol, data_root)
    n = len(images.names)
    settings = _settings(protocol, data_root, images.meta_file, n, backbone, checkpoint, flip, amp, chunk_size,
                         config)
    bounds = chunk_bounds(n, chunk_size)
    batches_for_chunks(bounds[:1], batch_size)  # validates batch_size early
    sidecar = output.with_name(output.name + ".extract.json")
    parts = output.with_name(output.name + ".parts")
    rank, world, local_rank = _dist_info()

    if output.exists():
        made_by = _read_json(sidecar)
        if made_by == settings:
            return output
        if not overwrite:
            why = (f"it was made with other {', '.join(sorted(k for k in settings if made_by.get(k) != settings[k]))}"
                   if made_by else f"it has no {sidecar.name} record")
            raise InputError(f"{output} exists but {why}; choose another --output or pass --overwrite")
    previous = _read_json(parts / SETTINGS_FILE)
    stale = parts.exists() and previous != settings
    if stale and not overwrite and previous is not None:
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        raise InputError(
            f"{parts} holds an unfinished extraction with different settings ({', '.join(changed)}); "
            "rerun with the same options to resume, or pass --overwrite to start again"
        )
    if rank == 0:
        if stale:
            shutil.rmtree(parts)
        for old in (output, sidecar):
            old.unlink(missing_ok=True)
    dev = resolve_device(device, local_rank if world > 1 else None)
    group = _init_distributed(dev) if world > 1 else None
    try:
        if rank == 0:
            parts.mkdir(parents=True, exist_ok=True)
            _write_json(parts / SETTINGS_FILE, settings)
        _barrier(world)
        mine = shard_chunks(len(bounds), rank, world)
        pending = [c for c in mine if not chunk_path(parts, *bounds[c]).is_file()]
        if pending:
            _run_chunks(images, bounds, pending, backbone, checkpoint, config, dev, flip, amp, batch_size,
                        workers, progress and rank == 0, parts, on_chunk_written, load_backbone, AlignedFaces,
                        done=sum(bounds[c][1] - bounds[c][0] for c in mine if c not in pending),
                        total=sum(bounds[c][1] - bounds[c][0] for c in mine))
        _barrier(world)
        if rank == 0:
            raw = merge_chunks(parts, bounds)
            bad = np.flatnonzero(~np.isfinite(raw).all(axis=1) | ~(np.abs(raw).sum(axis=1) > 0))
            if len(bad):
                first = int(bad[0])
                raise InputError(
                    f"{len(bad)} image(s) got NaN/Inf/zero embeddings, first row {first} "
                    f"({images.image_dir / images.names[first]}); without --amp this may go away, else "
                    f"check the checkpoint; delete {parts} to recompute"
                )
            write_feature_file(output, raw, images.faceness)
            _write_json(sidecar, settings)
            shutil.rmtree(parts, ignore_errors=True)
        _barrier(world)
    finally:
        if group is not None:
            torch.distributed.destroy_process_group()
    return output


def _run_chunks(images: Any, bounds: list[tuple[int, int]], pending: list[int], backbone: Any,
                checkpoint: str | None, config: dict[str, Any], dev: torch.device, flip: bool, amp: bool,
                batch_size: int, workers: int, progress: bool, parts: Path,
                on_chunk_written: Callable[[int], None] | None, load_backbone: Callable[..., Any],
                dataset_cls: Any, done: int, total: int) -> None:
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    net = load_backbone(backbone, checkpoint=checkpoint, **config).to(dev).eval()
    if not hasattr(net, "embed_images"):
        raise InputError(f"backbone {backbone!r} is not a facecoreset Backbone (no embed_images)")
    loader = DataLoader(
        dataset_cls(images),
        batch_sampler=batches_for_chunks([bounds[c] for c in pending], batch_size),
        num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    bar = tqdm(total=total, initial=done, unit="img", desc="extract", disable=not progress)
    queue = list(pending)
    start, end = bounds[queue[0]]
    rows: list[np.ndarray] = []
    filled = 0
    batches = iter(loader)
    try:
        for idx, raw in _iter_batches(batches, net, dev, flip, amp):
            if idx[0] != start + filled:
                raise RuntimeError(f"internal: batch starts at {idx[0]}, expected {start + filled}")
            rows.append(raw)
            filled += len(idx)
            bar.update(len(idx))
            if start + filled == end:
                with atomic_write(chunk_path(parts, start, end)) as fh:
                    np.save(fh, np.concatenate(rows, axis=0).astype(np.float32))
                if on_chunk_written is not None:
                    on_chunk_written(queue[0])
                queue.pop(0)
                rows, filled = [], 0
                if queue:
                    start, end = bounds[queue[0]]
    except FacecoresetError as exc:  # from a worker, torch puts the worker's traceback in the message
        message = _worker_message(exc)
        if message == str(exc):
            raise
        raise type(exc)(message) from None
    finally:
        bar.close()
        # stop the workers now: left to garbage collection after an error, their shutdown stalls ~5 s each
        getattr(batches, "_shutdown_workers", lambda: None)()


def _init_distributed(dev: torch.device) -> Any:
    import torch.distributed as dist

    if dist.is_initialized():
        return None
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.group.WORLD


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
