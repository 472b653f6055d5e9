"""The ``facecoreset`` command: list plugins, evaluate protocols, extract features, train.

Sub-commands live in their own modules, each exposing ``add_arguments(parser)`` and
``run(args) -> int``; those modules keep heavy imports inside ``run``.
"""

from __future__ import annotations

__all__ = ["main", "build_parser"]

import argparse
import importlib
import sys
import warnings

from .errors import FacecoresetError

#: sub-command -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "list": ("facecoreset_plugin.cli_list", "list registered aggregators, backbones and protocols"),
    "eval": ("eval_protocols.cli", "run IJB-B/IJB-C (or the synthetic) protocol and compare aggregators"),
    "extract": ("facecoreset_plugin.backbones.cli", "extract per-image features from IJB loose crops"),
    "train": ("aggregators.training.cli", "train a learned aggregator on a feature bank"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facecoreset", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"facecoreset {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # a part not installed: the rest of the CLI still works
            warnings.warn(f"facecoreset {name} is unavailable: {exc}", stacklevel=2)
            continue
        sub = subs.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(sub)
        sub.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except FacecoresetError as exc:
        print(f"facecoreset {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"facecoreset {args.command}: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facecoreset {args.command}: interrupted; finished outputs were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
