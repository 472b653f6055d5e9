"""``facecoreset eval``: run a protocol (IJB-B, IJB-C or the synthetic one) and compare aggregators.

With no data flags it generates the synthetic protocol and compares every registered
aggregator usable without extra files (plus those with a shipped synthetic checkpoint).
"""

from __future__ import annotations

__all__ = ["add_arguments", "run", "default_aggregators", "parse_checkpoints", "shipped_checkpoint"]

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from facecoreset_plugin.errors import InputError, PluginLoadError

DEFAULT_OUTPUT = "facecoreset-results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``facecoreset eval`` (no heavy imports here)."""
    parser.add_argument("--protocol", default="synthetic",
                        help="registered protocol: ijbb, ijbc, synthetic (default), or a plugin's name")
    parser.add_argument("--data-root", help="folder holding IJBB/ or IJBC/ (insightface layout); for synthetic: "
                        "where to generate/reuse the files (default: a temporary folder)")
    parser.add_argument("--features", help="per-image features: FaceCoresetNet .pkl, .npz or .safetensors")
    parser.add_argument("--aggregators", help="comma-separated names (default: every usable registered one)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"output folder (default ./{DEFAULT_OUTPUT})")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--far-rule", choices=("nearest", "strict"), default="nearest",
                        help="TAR@FAR rule of the headline table (both are always in results.json)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]PATH",
                        help="weights for aggregator NAME (repeatable or comma-separated); without NAME= the "
                             "backbone checkpoint for --backbone")
    parser.add_argument("--backbone", help="extract features from the loose crops with this registered backbone "
                        "when --features is absent (e.g. ir_101)")
    parser.add_argument("--flip", action="store_true", help="backbone extraction: add the mirrored image's feature")
    parser.add_argument("--batch-size", type=int, default=64, help="backbone extraction batch size")
    parser.add_argument("--amp", action="store_true", help="backbone extraction under autocast")
    parser.add_argument("--preset", default="demo", help="synthetic protocol size: tiny, small, demo (default), ijbc")
    parser.add_argument("--seed", type=int, default=0, help="synthetic protocol seed (default 0)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_checkpoints(values: list[str]) -> tuple[dict[str, str], str | None]:
    """``NAME=PATH`` entries -> {name: path}; the one entry without ``NAME=`` is the backbone's."""
    named: dict[str, str] = {}
    backbone: str | None = None
    for raw in values:
        for item in filter(None, (s.strip() for s in raw.split(","))):
            name, sep, path = item.partition("=")
            if sep and name and not Path(item).exists():
                if not path:
                    raise InputError(f"--checkpoint {item!r}: missing path after '='; use --checkpoint NAME=PATH")
                named[name] = path
            elif backbone is not None:
                raise InputError(f"--checkpoint: two entries without NAME= ({backbone!r}, {item!r}); only the "
                                 "backbone checkpoint may omit it (give aggregators as NAME=PATH)")
            else:
                backbone = item
    return named, backbone


def shipped_checkpoint(name: str) -> Path | None:
    """The shipped synthetic checkpoint ``aggregators/weights/<name>_synthetic.ckpt``, if installed."""
    from importlib import resources

    try:
        path = resources.files("aggregators") / "weights" / f"{name}_synthetic.ckpt"
    except (ModuleNotFoundError, TypeError):
        return None
    return Path(str(path)) if path.is_file() else None


def default_aggregators(shipped: bool = True) -> dict[str, str | None]:
    """Every registered aggregator usable without extra files: name -> shipped checkpoint or None.

    Args:
        shipped: include aggregators that need weights when a synthetic checkpoint is shipped
            (only meaningful on the synthetic protocol those weights were trained for).
    """
    import facecoreset_plugin as fp

    chosen: dict[str, str | None] = {}
    reg = fp.registry("aggregators")
    for name in fp.available("aggregators"):
        try:
            cls = reg.load(name)
        except PluginLoadError as exc:
            warnings.warn(f"skipping aggregator {name!r}: {exc}", stacklevel=2)
            continue
        if not getattr(cls, "needs_checkpoint", False):
            chosen[name] = None
        elif shipped:
            ckpt = shipped_checkpoint(name)
            if ckpt is not None:
                chosen[name] = str(ckpt)
    return chosen


def _check_device(device: str) -> str:
    from facecoreset_plugin.devices import resolve_device

    return str(resolve_device(device))


def _build_aggregators(names: list[str] | None, checkpoints: dict[str, str], synthetic: bool) -> dict[str, Any]:
    import facecoreset_plugin as fp

    if names is None:
        wanted = default_aggregators(shipped=synthetic)
        wanted.update({k: v for k, v in checkpoints.items() if k in fp.available("aggregators")})
    else:
        wanted = {n: checkpoints.get(n) for n in names}
    unknown = sorted(set(checkpoints) - set(wanted))
    if unknown:
        raise InputError(f"--checkpoint given for {', '.join(unknown)}, which is not among the evaluated "
                         f"aggregators ({', '.join(wanted)})")
    built = {}
    for name, ckpt in wanted.items():
        cls = fp.registry("aggregators").load(name)
        if ckpt is None and getattr(cls, "needs_checkpoint", False):
            shipped = shipped_checkpoint(name) if synthetic else None
            if shipped is None:
                where = "" if synthetic else " (the shipped synthetic weights are only used on --protocol synthetic)"
                raise InputError(f"aggregator {name!r} needs weights: pass --checkpoint {name}=PATH{where}; "
                                 "train some with `facecoreset train`")
            ckpt = str(shipped)
        if ckpt is not None and not Path(ckpt).is_file():
            raise InputError(f"--checkpoint {name}={ckpt}: file not found (looked in {Path(ckpt).resolve().parent})")
        built[name] = fp.load(name, checkpoint=ckpt)
    if not built:
        raise InputError("no aggregator to evaluate; pass --aggregators NAME[,NAME...]")
    return built


def run(args: argparse.Namespace) -> int:
    """Run the protocol, write the reports, print the headline table."""
    import facecoreset_plugin as fp

    from .report import write_report
    from .runner import evaluate_detailed

    started = time.perf_counter()
    progress = not args.no_progress
    device = _check_device(args.device)
    named, backbone_ckpt = parse_checkpoints(args.checkpoint)
    names = None
    if args.aggregators:
        names = list(dict.fromkeys(n.strip() for n in args.aggregators.split(",") if n.strip()))
        available = fp.available("aggregators")
        missing = [n for n in names if n not in available]
        if missing:
            raise InputError(f"unknown aggregator(s) {', '.join(map(repr, missing))}; available: {', '.join(available)}")
    if backbone_ckpt is not None and not args.backbone:
        raise InputError(f"--checkpoint {backbone_ckpt!r} has no NAME=: that form is the backbone checkpoint and "
                         "needs --backbone; for an aggregator write --checkpoint NAME=PATH")
    aggregators = _build_aggregators(names, named, synthetic=args.protocol == "synthetic")
    output = Path(args.output)
    features = args.features
    tmp = None
    if args.protocol == "synthetic":
        from .synthetic import SyntheticConfig, SyntheticProtocol

        protocol = SyntheticProtocol(SyntheticConfig.preset(args.preset, seed=args.seed))
        data_root = args.data_root
        if data_root is None:
            tmp = tempfile.TemporaryDirectory(prefix="facecoreset-synthetic-")
            data_root = tmp.name
    else:
        protocol = fp.load_protocol(args.protocol)
        data_root = args.data_root
        if data_root is None:
            raise InputError(f"--protocol {args.protocol} needs --data-root (the folder holding "
                             f"{args.protocol.upper()}/meta/)")
        if features is None:
            if not args.backbone:
                raise InputError(f"--protocol {args.protocol} needs --features FILE, or --backbone NAME to extract "
                                 "features from the loose crops first")
            if backbone_ckpt is None:
                raise InputError(f"--backbone {args.backbone} has no weights: pass --checkpoint PATH (the backbone "
                                 "checkpoint, without NAME=); random weights would give meaningless features")
            from facecoreset_plugin.backbones.extract import extract_features

            # cached per backbone; same settings reuse the file, changed settings recompute it
            safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.backbone)
            features = str(extract_features(protocol=args.protocol, data_root=data_root, backbone=args.backbone,
                                            checkpoint=backbone_ckpt, output=output / f"features_{safe_name}.npz",
                                            flip=args.flip, device=device, batch_size=args.batch_size, amp=args.amp,
                                            progress=progress, overwrite=True))
    try:
        data = protocol.load(data_root, features, progress=progress)
        result = evaluate_detailed(data, aggregators, device=device, progress=progress)
        extra = {"device": device, "elapsed_s": time.perf_counter() - started,
                 "checkpoints": {n: named.get(n) or str(shipped_checkpoint(n)) for n in aggregators
                                 if n in named or getattr(type(aggregators[n]), "needs_checkpoint", False)}}
        written = write_report(output, args.protocol, result, data.labels.numpy(), data.summary(), args.far_rule,
                               plots=not args.no_plots, extra=extra)
    finally:
        if tmp is not None:
            tmp.cleanup()
    _print_headline(result.results, args.far_rule)
    print(f"wrote {', '.join(str(p) for p in written.values())} ({time.perf_counter() - started:.1f} s)")
    return 0


def _print_headline(results: dict[str, Any], rule: str) -> None:
    keys = ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    width = max(len(n) for n in results) + 2
    print(f"TAR (%) @ FAR, rule {rule}".ljust(width) + "".join(k.rjust(9) for k in keys) + "   rank1 (mean)")
    for name, res in results.items():
        tars = res["verification"]["tar_at_far"][rule]
        r1 = res.get("identification", {}).get("mean", {}).get("rank1")
        print(name.ljust(width) + "".join(f"{100 * tars[k]:9.2f}" if k in tars else " " * 9 for k in keys)
              + (f"   {100 * r1:.2f}" if r1 is not None else ""), file=sys.stdout)
