"""``facecoreset extract``: IJB loose crops + a backbone checkpoint -> the runner's feature file."""

from __future__ import annotations

__all__ = ["add_arguments", "run"]

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``facecoreset extract`` (no heavy imports here)."""
    parser.add_argument("--protocol", required=True, choices=["ijbb", "ijbc"], help="IJB-B or IJB-C")
    parser.add_argument("--data-root", required=True, type=Path, help="folder holding IJBB/ or IJBC/")
    parser.add_argument("--backbone", required=True, help="registered backbone: ir_101, ir_50, timm:<name>, ...")
    parser.add_argument("--checkpoint", default=None, help="backbone weights (AdaFace .ckpt, state dict)")
    parser.add_argument("--output", required=True, type=Path, help="feature file to write (.npz)")
    parser.add_argument("--flip", action="store_true", help="flip fusion: add the mirrored image's embedding")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (under torchrun: each rank's GPU)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding and aligning images")
    parser.add_argument("--chunk-size", type=int, default=4096, help="images per resumable chunk")
    parser.add_argument("--overwrite", action="store_true", help="discard results made with other settings")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the extraction; resumes an interrupted one with the same options."""
    import os

    from ..errors import InputError
    from .extract import extract_features

    if args.checkpoint is None:
        raise InputError("--checkpoint is required: random backbone weights give meaningless features")
    out = extract_features(
        args.protocol, args.data_root, args.backbone, args.checkpoint, args.output,
        flip=args.flip, device=args.device, batch_size=args.batch_size, amp=args.amp,
        workers=args.workers, progress=not args.no_progress, chunk_size=args.chunk_size,
        overwrite=args.overwrite,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out}")
    return 0
