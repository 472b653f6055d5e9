"""IJB-B and IJB-C protocols read from the insightface layout (``REFERENCE.md`` section 2)."""

from __future__ import annotations

__all__ = ["IJBConfig", "IJBProtocol", "IJBBProtocol", "IJBCProtocol", "load_ijb"]

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from facecoreset_plugin.errors import InputError

from .features_io import read_features
from .ijb_files import meta_paths, read_1n_csv, read_face_tid_mid, read_template_pairs
from .protocol import Protocol, ProtocolData, assemble_protocol_data, build_templates


@dataclass(frozen=True)
class IJBConfig:
    """Options of the IJB protocols."""

    one_to_n: bool = True  # also read the 1:N gallery/probe CSVs (skipped when they are absent)


def load_ijb(variant: str, data_root: str | Path, features: str | Path, one_to_n: bool = True,
             progress: bool = True, name: str | None = None) -> ProtocolData:
    """Read an IJB variant's meta files and a feature file into :class:`ProtocolData`.

    Args:
        variant: "ijbb" or "ijbc" (the file layout).
        data_root: the folder holding ``IJBB/`` or ``IJBC/``.
        features: per-image feature file (.pkl, .npz, .safetensors), rows in meta order.
        one_to_n: read the 1:N CSVs when present.
        progress: show a progress bar over the reading stages.
        name: protocol name recorded in the data (defaults to ``variant``).
    """
    from tqdm.auto import tqdm

    paths = meta_paths(data_root, variant)
    if not paths.meta_dir.is_dir():
        raise InputError(
            f"{paths.meta_dir} not found: --data-root {data_root} must contain {paths.meta_dir.parent.name}/meta/ "
            "(the insightface IJB layout)"
        )
    steps = tqdm(total=4, desc=f"{variant}: reading", unit="file", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the big pair file parses beside the rest
        pending = pool.submit(read_template_pairs, paths.template_pair_label)
        names, tids, mids = read_face_tid_mid(paths.face_tid_mid)
        steps.update()
        feats = read_features(features, expected_rows=len(names))
        steps.update()
        templates = build_templates(feats, tids, mids)
        del feats
        pairs = pending.result()
        steps.update()
    galleries, probe = {}, None
    have_1n = paths.probe.is_file() and all(p.is_file() for p in paths.galleries.values())
    if one_to_n and have_1n:
        for g, p in paths.galleries.items():
            t, s = read_1n_csv(p)
            galleries[g] = (t, s, p)
        t, s = read_1n_csv(paths.probe)
        probe = (t, s, paths.probe)
    steps.update()
    steps.close()
    info = {"data_root": str(data_root), "features_file": str(features)}
    if one_to_n and not have_1n:
        info["one_to_n"] = f"skipped: 1:N CSVs not found in {paths.meta_dir}"
    return assemble_protocol_data(name or variant, templates, pairs, paths.template_pair_label, galleries, probe,
                                  info)


class IJBProtocol(Protocol):
    """An IJB protocol in the insightface layout; subclasses fix the variant."""

    variant: ClassVar[str] = ""
    Config = IJBConfig

    def load(self, data_root: str | Path | None = None, features: str | Path | None = None,
             progress: bool = True) -> ProtocolData:
        if data_root is None or features is None:
            raise InputError(
                f"protocol {self.name!r} needs --data-root (holding {self.variant.upper()}/meta/) and --features "
                "(a .pkl/.npz/.safetensors file with one row per image), or --backbone to extract features"
            )
        return load_ijb(self.variant, data_root, features, self.config.one_to_n, progress, self.name)


class IJBBProtocol(IJBProtocol):
    """IJB-B: 1:1 verification and 1:N identification on galleries S1 and S2."""

    name = "ijbb"
    variant = "ijbb"


class IJBCProtocol(IJBProtocol):
    """IJB-C: 1:1 verification and 1:N identification on galleries G1 and G2."""

    name = "ijbc"
    variant = "ijbc"
