"""``facecoreset train NAME``: fit a trainable aggregator on a feature bank (or an image folder).

Example::

    facecoreset train coreset_attention --train-features bank.npz --output runs/ca --max-minutes 15
"""

from __future__ import annotations

__all__ = ["add_arguments", "run", "parse_options", "resolve_aggregator"]

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

_DEFAULT_MARGIN = {"adaface": 0.8, "arcface": 0.5, "cosface": 0.35}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``train`` options (no heavy imports here)."""
    p = parser
    p.add_argument("aggregator", help="registered trainable aggregator (e.g. coreset_attention) or module:Class")
    src = p.add_argument_group("training data (one of)")
    src.add_argument("--train-features", metavar="BANK", help=".npz/.safetensors bank: features [N,D], norms [N], labels [N], optional media [N]")
    src.add_argument("--train-images", metavar="DIR", help="folder with one sub-folder of aligned face crops per identity (needs --backbone)")
    src.add_argument("--backbone", help="registered backbone that embeds --train-images (frozen), e.g. ir_101")
    src.add_argument("--backbone-checkpoint", metavar="PATH", help="weights of --backbone")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for best.ckpt, last.ckpt, history.json")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="aggregator config option (repeatable)")
    p.add_argument("--init", metavar="CKPT", help="start from these aggregator weights")
    run_g = p.add_argument_group("optimisation")
    run_g.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    run_g.add_argument("--batch-sets", type=int, default=20, help="sets per step and process (default 20)")
    run_g.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    run_g.add_argument("--head-lr", type=float, default=None, help="class-kernel learning rate (default: --lr)")
    run_g.add_argument("--weight-decay", type=float, default=1e-3, help="AdamW weight decay (default 1e-3)")
    run_g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip, 0 = off (default 1.0)")
    run_g.add_argument("--seed", type=int, default=0, help="seed of batches, noise and initialisation (default 0)")
    run_g.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after M minutes, keeping best.ckpt")
    run_g.add_argument("--eval-every", type=int, default=200, help="validate every N steps (default 200)")
    run_g.add_argument("--checkpoint-every", type=int, default=100, help="write last.ckpt every N steps (default 100)")
    run_g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (under torchrun: cuda:LOCAL_RANK)")
    run_g.add_argument("--no-resume", action="store_true", help="start over even if OUTPUT/last.ckpt exists")
    run_g.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = p.add_argument_group("set sampling")
    s.add_argument("--min-set", type=int, default=1, help="smallest set size (default 1)")
    s.add_argument("--max-set", type=int, default=20, help="largest set size (default 20)")
    s.add_argument("--clip-prob", type=float, default=0.5, help="chance an element group is a simulated clip (default 0.5)")
    s.add_argument("--max-clip-len", type=int, default=3, help="frames per simulated clip, at most (default 3)")
    h = p.add_argument_group("margin head")
    h.add_argument("--head", choices=sorted(_DEFAULT_MARGIN), default="adaface", help="margin loss (default adaface)")
    h.add_argument("--margin", type=float, default=None, help="m (default adaface 0.8, arcface 0.5, cosface 0.35)")
    h.add_argument("--h", dest="adaface_h", type=float, default=0.333, help="AdaFace h (default 0.333)")
    h.add_argument("--scale", type=float, default=48.0, help="logit scale s (default 48)")
    v = p.add_argument_group("model selection (never the test protocol)")
    v.add_argument("--val-fraction", type=float, default=0.1, help="identities of the bank held out for validation (default 0.1; 0 = none)")
    v.add_argument("--val-templates", type=int, default=4, help="held-out bank: templates per identity (default 4)")
    v.add_argument("--val-far", type=float, default=1e-4, help="best.ckpt maximises TAR at this FAR (default 1e-4)")
    v.add_argument("--val-protocol", help="validate on this registered protocol instead (e.g. synthetic)")
    v.add_argument("--val-data-root", metavar="DIR", help="data root of --val-protocol")
    v.add_argument("--val-features", metavar="FILE", help="per-image features of --val-protocol")
    v.add_argument("--val-option", action="append", default=[], metavar="KEY=VALUE", help="option of the --val-protocol constructor")
    e = p.add_argument_group("export")
    e.add_argument("--export", metavar="PATH", help="also write best.ckpt slimmed (no optimizer state) to PATH")
    e.add_argument("--export-dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="weight dtype of --export")


def parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values are JSON when they parse as JSON, else strings."""
    from facecoreset_plugin.errors import InputError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} dropout=0.1")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def resolve_aggregator(name: str) -> type:
    """A registered aggregator class, or ``module:Class`` imported from the Python path."""
    import importlib

    from facecoreset_plugin import registry
    from facecoreset_plugin.errors import InputError

    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise InputError(f"aggregator {name!r}: cannot import ({exc}); use a registered name or module:Class") from exc
    else:
        cls = registry("aggregators").load(name)
    if not getattr(cls, "trainable", False):
        from facecoreset_plugin import available

        names = [n for n in available("aggregators") if getattr(_safe_load(n), "trainable", False)]
        raise InputError(f"aggregator {name!r} has no learned weights (trainable = False); trainable ones: {names}")
    return cls


def _safe_load(name: str) -> Any:
    from facecoreset_plugin import registry

    try:
        return registry("aggregators").load(name)
    except Exception:  # a broken plugin is listed elsewhere; here it is just not trainable
        return None


def _train_config(args: argparse.Namespace) -> Any:
    from .heads import HeadConfig
    from .sampler import SamplerConfig
    from .trainer import TrainConfig

    margin = args.margin if args.margin is not None else _DEFAULT_MARGIN[args.head]
    return TrainConfig(
        steps=args.steps, lr=args.lr, head_lr=args.head_lr, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, seed=args.seed, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes,
        sampler=SamplerConfig(min_size=args.min_set, max_size=args.max_set, sets_per_batch=args.batch_sets,
                              clip_prob=args.clip_prob, max_clip_len=args.max_clip_len),
        head=HeadConfig(kind=args.head, margin=margin, h=args.adaface_h, scale=args.scale),
    ).validate()


def _bank_path(args: argparse.Namespace, output: Path, main: bool, device: Any = "cpu") -> Path:
    from facecoreset_plugin.errors import InputError

    if bool(args.train_features) == bool(args.train_images):
        raise InputError("give exactly one of --train-features BANK or --train-images DIR")
    if args.train_features:
        return Path(args.train_features)
    if not args.backbone:
        raise InputError("--train-images needs --backbone NAME (a registered backbone; see `facecoreset list`)")
    bank = output / "train_bank.npz"
    if main and not bank.exists():
        from facecoreset_plugin import load_backbone

        from .image_bank import bank_from_image_folder

        backbone = load_backbone(args.backbone, checkpoint=args.backbone_checkpoint)
        bank_from_image_folder(args.train_images, backbone, bank, device=device, progress=not args.no_progress)
    return bank


def run(args: argparse.Namespace) -> int:
    """Train, then print where best.ckpt is and its validation metric."""
    import torch

    from facecoreset_plugin.devices import resolve_device
    from facecoreset_plugin.errors import InputError

    from .bank import load_bank, split_identities
    from .trainer import dist_info, export_checkpoint, train
    from .validation import BankValidator, ProtocolValidator, ValidationConfig

    cfg = _train_config(args)
    info = dist_info()
    device = resolve_device(args.device, info.local_rank if info.world_size > 1 else None)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    bank_path = _bank_path(args, output, info.is_main, device)
    if info.world_size > 1 and args.train_images:
        _wait_for(bank_path)
    bank = load_bank(bank_path)
    cls = resolve_aggregator(args.aggregator)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    options = parse_options(args.option, "--option")
    model = cls.from_checkpoint(args.init, **options) if args.init else cls(**options)
    validator = None
    if args.val_protocol:
        load_kwargs: dict[str, Any] = {k: v for k, v in (("data_root", args.val_data_root),
                                                          ("features", args.val_features)) if v}
        load_kwargs["progress"] = False
        _warn_if_test_protocol(args)
        if info.is_main:
            validator = ProtocolValidator(args.val_protocol, args.val_far, load_kwargs,
                                          parse_options(args.val_option, "--val-option"))
        train_bank = bank
    else:
        train_bank, val_bank = split_identities(bank, args.val_fraction, seed=cfg.seed)
        if val_bank is not None and info.is_main:
            sampler = dataclasses.replace(cfg.sampler, sets_per_batch=1)
            validator = BankValidator(val_bank, sampler, ValidationConfig(templates_per_identity=args.val_templates,
                                                                        select_far=args.val_far))
    if validator is None and args.val_fraction == 0 and not args.val_protocol and info.is_main:
        print("facecoreset train: no validation (--val-fraction 0): best.ckpt is the last step")
    provenance = {"aggregator": args.aggregator, "bank": str(bank_path), "bank_images": bank.num_images,
                  "bank_identities": bank.num_classes, "train_identities": train_bank.num_classes,
                  "validation": args.val_protocol or f"held-out {args.val_fraction:g} of bank identities",
                  "world_size": info.world_size}
    result = train(model, train_bank, output, cfg, validator=validator, device=device,
                   resume=not args.no_resume, progress=not args.no_progress, extra={"provenance": provenance})
    if not info.is_main:
        return 0
    how = "stopped by --max-minutes at" if result.stopped_early else "finished"
    print(f"facecoreset train: {how} step {result.step}; best.ckpt = step {result.best_step} "
          f"({result.metric} {result.best_metric:.4f}); outputs in {output}")
    if args.export:
        dtype = getattr(torch, args.export_dtype)
        if not (output / "best.ckpt").exists():
            raise InputError(f"{output}/best.ckpt was not written (no step finished); nothing to export")
        path = export_checkpoint(output / "best.ckpt", args.export, dtype=dtype)
        print(f"facecoreset train: exported {path} ({path.stat().st_size / 1e6:.1f} MB, {args.export_dtype})")
    return 0


def _warn_if_test_protocol(args: argparse.Namespace) -> None:
    """Model selection on a benchmark you then report is test-set tuning: say so."""
    import sys

    opts = parse_options(args.val_option, "--val-option")
    if args.val_protocol in ("ijbb", "ijbc") or (args.val_protocol == "synthetic" and "seed" not in opts):
        print(f"facecoreset train: warning: validating on {args.val_protocol!r}"
              f"{' with its default seed' if args.val_protocol == 'synthetic' else ''}, which `facecoreset eval` "
              "reports as a test result; select on a different protocol/seed to keep the test held out",
              file=sys.stderr)


def _wait_for(path: Path, timeout_s: float = 3600) -> None:
    import time

    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        return
    start = time.monotonic()
    while not path.exists():  # rank 0 is embedding the image folder
        if time.monotonic() - start > timeout_s:
            from facecoreset_plugin.errors import InputError

            raise InputError(f"timed out waiting for rank 0 to write {path}")
        time.sleep(2)
