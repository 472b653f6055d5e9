"""``facecoreset list``: every registered plugin with the distribution that provides it."""

from __future__ import annotations

__all__ = ["add_arguments", "run", "format_listing"]

import argparse

from ._registry import GROUPS, registry
from .errors import PluginLoadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="import every plugin and mark the broken ones")
    parser.add_argument("--kind", choices=sorted(GROUPS), help="list only this kind")


def format_listing(kinds: list[str], check: bool = False) -> str:
    lines = []
    for kind in kinds:
        reg = registry(kind)
        entries = reg.entries(refresh=True)
        lines.append(f"{kind} ({reg.group}):")
        if not entries:
            lines.append("  (none)")
        width = max((len(n) for n in entries), default=0)
        for name, info in sorted(entries.items()):
            status = ""
            if check:
                try:
                    reg.load(name)
                    status = "  ok"
                except PluginLoadError as exc:
                    status = f"  BROKEN: {exc.__cause__!r}"
            lines.append(f"  {name:<{width}}  {info.distribution} {info.version}  ({info.target}){status}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(GROUPS)
    print(format_listing(kinds, check=args.check))
    return 0
