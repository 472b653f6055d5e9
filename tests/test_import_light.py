"""Importing the host package stays light: no timm, matplotlib or plugin modules."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_heavy_or_plugin_modules():
    code = (
        "import sys, facecoreset_plugin as f; f.available('aggregators'); f.available('backbones');"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('timm', 'matplotlib', 'aggregators', 'eval_protocols', 'sklearn'));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == ""


def test_building_the_cli_parser_stays_light():
    """`facecoreset --help` must not pay for timm, matplotlib or torchmetrics."""
    code = (
        "import sys; from facecoreset_plugin.cli import build_parser; build_parser();"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('timm', 'matplotlib', 'torchmetrics', 'sklearn'));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == ""
