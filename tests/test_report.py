"""Reports: JSON layout, Markdown tables, plots and npz, atomic (interrupted runs leave nothing half-written)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import facecoreset_plugin as fp
from eval_protocols import report
from eval_protocols.runner import evaluate_detailed
from eval_protocols.synthetic import SyntheticProtocol


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = SyntheticProtocol(preset="tiny").load(tmp_path_factory.mktemp("rep"), progress=False)
    return data, evaluate_detailed(data, {"mean": fp.load("mean"), "quality_weighted": fp.load("quality_weighted")},
                                   progress=False)


def test_all_files_and_contents(run, tmp_path):
    data, out = run
    written = report.write_report(tmp_path, "synthetic", out, data.labels.numpy(), data.summary(), "strict")
    assert set(written) == {"scores", "roc", "dir", "markdown", "json"}
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["protocol"] == "synthetic" and doc["far_rule"] == "strict"
    v = doc["aggregators"]["mean"]["verification"]
    assert list(v["tar_at_far"]["nearest"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert v["tar_at_far"]["strict"]["0.01"] == out.results["mean"]["verification"]["tar_at_far"]["strict"]["0.01"]
    assert set(doc["aggregators"]["mean"]["identification"]) == {"G1", "G2", "mean"}
    md = (tmp_path / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| quality_weighted | G2 |"))
    assert f"{100 * out.results['quality_weighted']['identification']['G2']['rank1']:.2f}" in row
    assert "rule `strict`" in md.split("\n## ")[1]  # the chosen rule's table comes first
    z = np.load(tmp_path / "scores.npz")
    np.testing.assert_array_equal(z["scores/mean"], out.scores["mean"])
    np.testing.assert_array_equal(z["labels"], data.labels.numpy())
    assert len(z["dir_tpir/quality_weighted/G1"]) == len(z["dir_fpir/quality_weighted/G1"]) > 0
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_interrupted_run_keeps_the_old_results(run, tmp_path, monkeypatch):
    data, out = run
    report.write_report(tmp_path, "synthetic", out, data.labels.numpy())
    before = (tmp_path / "results.json").read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report.json, "dump", boom)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(tmp_path, "other", out, data.labels.numpy())
    assert (tmp_path / "results.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert "synthetic" in (tmp_path / "results.md").read_text()  # no new markdown beside the old json
    assert "other" not in (tmp_path / "results.md").read_text()


def test_sanitize():
    assert report.sanitize({"a": float("nan"), "b": (np.float32(0.5), float("inf"))}) == {"a": None, "b": [0.5, None]}
