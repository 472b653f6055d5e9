"""The example third-party package: once installed it is listed and loadable."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facecoreset_plugin import PluginRegistry, load

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "facecoreset-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install the example package (no deps) into a private target directory."""
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(EXAMPLE)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(4, "--no-build-isolation")
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return target


def test_installed_plugin_is_listed_and_loadable(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    reg = PluginRegistry("facecoreset.aggregators", path=[str(installed)])
    info = reg.entries()["norm_softmax"]
    assert info.distribution in ("facecoreset_example_plugin", "facecoreset-example-plugin")
    cls = reg.load("norm_softmax")
    agg = load(cls, temperature=1.0)
    f = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    n = torch.rand(2, 5) * 10
    out = agg(f, n)
    w = torch.softmax(n, dim=1)
    torch.testing.assert_close(out, torch.nn.functional.normalize(torch.einsum("bn,bnd->bd", w, f), dim=-1))


def test_cli_lists_the_installed_plugin(installed):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "facecoreset_plugin.cli", "list", "--kind", "aggregators"],
                         check=True, capture_output=True, text=True, env=env).stdout
    line = next(l for l in out.splitlines() if l.strip().startswith("norm_softmax"))
    assert "0.1.0" in line and "facecoreset_example_plugin:NormSoftmaxAggregator" in line
