"""Write a run's outputs: results.json, results.md, ROC/DIR plots (PNG) and raw scores (npz).

Every file is written atomically (a temporary file renamed into place), and ``results.json``
last, so an interrupted run never leaves a half-written results file.
"""

from __future__ import annotations

__all__ = ["write_report", "results_document", "markdown_tables", "sanitize", "plot_roc", "plot_dir"]

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facecoreset_plugin.safe_io import atomic_write

from .metrics import FARS, far_key
from .runner import EvaluationOutput

_ID_KEYS = ("rank1", "rank5", "rank10", "tpir@0.01", "tpir@0.1")


def sanitize(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/Inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_document(protocol: str, output: EvaluationOutput, summary: dict[str, Any] | None = None,
                     far_rule: str = "nearest", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``results.json`` content."""
    return sanitize({"protocol": protocol, "far_rule": far_rule, "data": summary or {}, **(extra or {}),
                     "aggregators": output.results})


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100.0 * x:.2f}"


def markdown_tables(doc: dict[str, Any], fars: Sequence[float] = FARS) -> str:
    """Paper-style Markdown tables (aggregators as rows, values in %)."""
    aggs = doc["aggregators"]
    rule = doc.get("far_rule", "nearest")
    other = "strict" if rule == "nearest" else "nearest"
    keys = [far_key(f) for f in fars]
    lines = [f"# Results: {doc['protocol']}", ""]
    data = doc.get("data", {})
    counts = {k: v for k, v in data.items() if isinstance(v, int)}
    if counts:
        lines += [", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in counts.items()), ""]
    for r, title in ((rule, f"1:1 verification, TAR (%) @ FAR, rule `{rule}`"),
                     (other, f"1:1 verification, TAR (%) @ FAR, rule `{other}`")):
        lines += [f"## {title}", "", "| aggregator | " + " | ".join(keys) + " | AUC (%) |",
                  "|---|" + "---:|" * (len(keys) + 1)]
        for name, res in aggs.items():
            v = res["verification"]
            tars = v["tar_at_far"][r]
            lines.append(f"| {name} | " + " | ".join(_pct(tars.get(k)) for k in keys) + f" | {_pct(v.get('auc'))} |")
        lines.append("")
    lines += ["Achieved FPR and false accepts of the `strict` rule:", "",
              "| aggregator | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, res in aggs.items():
        st = res["verification"]["strict"]
        cells = [f"{st[k]['fpr']:.2g} ({st[k]['false_accepts']})" if k in st and st[k].get("fpr") is not None else "–"
                 for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    galleries = [g for g in next(iter(aggs.values())).get("identification", {})] if aggs else []
    if galleries:
        lines += ["## 1:N open-set identification (%), per gallery and mean", "",
                  "| aggregator | gallery | " + " | ".join(_ID_KEYS) + " |", "|---|---|" + "---:|" * len(_ID_KEYS)]
        for name, res in aggs.items():
            for g in galleries:
                row = res["identification"].get(g, {})
                lines.append(f"| {name} | {g} | " + " | ".join(_pct(row.get(k)) for k in _ID_KEYS) + " |")
        lines.append("")
    lines += ["## Timings (s)", "", "| aggregator | aggregate | score | verification | identification | total |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, res in aggs.items():
        t = res.get("timings", {})
        cells = [t.get(k) for k in ("aggregate_s", "score_s", "verification_s", "identification_s", "total_s")]
        lines.append(f"| {name} | " + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: plots skipped (pip install 'facecoreset[plot]')", stacklevel=3)
        return None
    return plt


def plot_roc(path: Path, output: EvaluationOutput, title: str) -> bool:
    """TAR vs FAR (log) of every aggregator; False when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for name, curves in output.curves.items():
        roc = curves.get("roc")
        if roc and roc["fpr"]:
            ax.plot(np.maximum(roc["fpr"], 1e-7), roc["tpr"], label=name)
    ax.set_xlim(1e-6, 1)
    _style_axes(ax, "FAR", "TAR", title)
    _save_figure(plt, fig, path)
    return True


def _style_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")


def _save_figure(plt, fig, path: Path) -> None:
    try:
        with atomic_write(path) as fh:
            fig.savefig(fh, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_dir(path: Path, output: EvaluationOutput, title: str) -> bool:
    """DIR curves (TPIR vs FPIR) per gallery; False when matplotlib is missing or there is no 1:N part."""
    galleries = sorted({g for c in output.curves.values() for g in c if g != "roc"})
    if not galleries:
        return False
    plt = _pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(galleries), figsize=(5 * len(galleries), 4), dpi=110, squeeze=False)
    for ax, g in zip(axes[0], galleries):
        for name, curves in output.curves.items():
            d = curves.get(g, {}).get("dir")
            if d and d["fpir"]:
                ax.plot(d["fpir"], d["tpir"], label=name)
        _style_axes(ax, "FPIR", "TPIR", f"{title} {g}")
    _save_figure(plt, fig, path)
    return True


def _write_npz(path: Path, output: EvaluationOutput, labels: np.ndarray) -> None:
    arrays: dict[str, np.ndarray] = {"labels": labels.astype(np.int8)}
    for name, scores in output.scores.items():
        arrays[f"scores/{name}"] = scores.astype(np.float32)
        for key, curves in output.curves.items():
            if key != name:
                continue
            if "roc" in curves:
                arrays[f"roc_fpr/{name}"] = np.asarray(curves["roc"]["fpr"], dtype=np.float64)
                arrays[f"roc_tpr/{name}"] = np.asarray(curves["roc"]["tpr"], dtype=np.float64)
            for g, c in curves.items():
                if g == "roc":
                    continue
                arrays[f"cmc/{name}/{g}"] = np.asarray(c.get("cmc", []), dtype=np.float64)
                arrays[f"dir_fpir/{name}/{g}"] = np.asarray(c.get("dir", {}).get("fpir", []), dtype=np.float64)
                arrays[f"dir_tpir/{name}/{g}"] = np.asarray(c.get("dir", {}).get("tpir", []), dtype=np.float64)
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)


def write_report(output_dir: str | Path, protocol: str, output: EvaluationOutput, labels: np.ndarray,
                 summary: dict[str, Any] | None = None, far_rule: str = "nearest", fars: Sequence[float] = FARS,
                 plots: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write every output file under ``output_dir``; returns kind -> path of what was written.

    Files: ``scores.npz`` (labels, per-aggregator scores, ROC/CMC/DIR curves), ``roc.png``,
    ``dir.png``, ``results.md`` and, last, ``results.json``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # every file is staged first and moved in at the end (results.json last), so an interrupted
    # run leaves the previous outputs whole and never a mix of old and new files
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        staged: dict[str, Path] = {}
        _write_npz(staging / "scores.npz", output, np.asarray(labels))
        staged["scores"] = staging / "scores.npz"
        if plots:
            if plot_roc(staging / "roc.png", output, f"{protocol} 1:1"):
                staged["roc"] = staging / "roc.png"
            if plot_dir(staging / "dir.png", output, f"{protocol} 1:N"):
                staged["dir"] = staging / "dir.png"
        doc = results_document(protocol, output, summary, far_rule, extra)
        with atomic_write(staging / "results.md", "w") as fh:
            fh.write(markdown_tables(doc, fars))
        staged["markdown"] = staging / "results.md"
        with atomic_write(staging / "results.json", "w") as fh:
            json.dump(doc, fh, indent=1, allow_nan=False)
        staged["json"] = staging / "results.json"
        written = {kind: out / path.name for kind, path in staged.items()}
        for kind, path in staged.items():
            os.replace(path, written[kind])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
