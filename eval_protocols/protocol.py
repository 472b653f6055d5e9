"""The protocol plugin interface and ``ProtocolData``, what every protocol's ``load`` returns.

A protocol (registered under ``facecoreset.protocols``) turns meta files plus per-image
features into :class:`ProtocolData`: templates as ragged sets, 1:1 pairs as template
positions with labels, and the 1:N galleries and probes. The runner needs nothing else.
"""

from __future__ import annotations

__all__ = ["IdentificationSet", "ProtocolData", "Protocol", "build_templates", "assemble_protocol_data", "positions_of"]

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from facecoreset_plugin.batching import RaggedSets
from facecoreset_plugin.config import overlay_config
from facecoreset_plugin.errors import InputError

from .features_io import ImageFeatures


@dataclass
class IdentificationSet:
    """Templates of one 1:N gallery or probe list."""

    positions: Tensor  # [T] int64 rows of ProtocolData.templates
    subjects: Tensor  # [T] int64 subject ids


@dataclass
class ProtocolData:
    """Everything a protocol run needs, independent of any aggregator."""

    name: str  # protocol name, e.g. "ijbc"
    templates: RaggedSets  # one set per template (ascending template id), media/faceness attached
    pair_left: Tensor  # [P] int64 template positions (rows of templates)
    pair_right: Tensor  # [P] int64 template positions
    labels: Tensor  # [P] int64, 1 genuine, 0 impostor
    galleries: dict[str, IdentificationSet] = field(default_factory=dict)  # 1:N galleries by name
    probes: IdentificationSet | None = None  # 1:N probe templates (None: no 1:N part)
    info: dict[str, Any] = field(default_factory=dict)  # counts and source files, for reports

    @property
    def template_ids(self) -> Tensor:
        return self.templates.set_ids

    def summary(self) -> dict[str, Any]:
        """Counts for reports."""
        out = {
            "images": int(self.templates.features.shape[0]),
            "templates": int(self.templates.num_sets),
            "pairs": int(self.labels.numel()),
            "genuine_pairs": int(self.labels.sum()),
        }
        if self.probes is not None:
            out["probe_templates"] = int(self.probes.positions.numel())
            out.update({f"gallery_{g}_templates": int(s.positions.numel()) for g, s in self.galleries.items()})
        return {**out, **self.info}


def positions_of(template_ids: Tensor, ids: np.ndarray | Tensor, source: str | Path) -> Tensor:
    """Positions of ``ids`` in the ascending ``template_ids``.

    Raises:
        InputError: an id that no image belongs to (naming ``source``).
    """
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.int64)
    if len(template_ids) == 0:
        pos, unknown = torch.zeros_like(ids_t), torch.ones_like(ids_t, dtype=torch.bool)
    elif 0 <= int(template_ids[0]) and int(template_ids[-1]) <= max(8 * len(ids_t), 1 << 22):
        # ids are modest integers: a lookup table is linear time (no binary search per id)
        lut = torch.full((int(template_ids[-1]) + 1,), -1, dtype=torch.int64)
        lut[template_ids] = torch.arange(len(template_ids))
        if len(ids_t) == 0 or (int(ids_t.min()) >= 0 and int(ids_t.max()) < len(lut)):
            pos = lut[ids_t]
            unknown = pos < 0
        else:
            inside = (ids_t >= 0) & (ids_t < len(lut))
            pos = torch.where(inside, lut[ids_t.clamp(0, len(lut) - 1)], -1)
            unknown = pos < 0
        pos = pos.clamp_min(0)
    else:
        pos = torch.searchsorted(template_ids, ids_t).clamp_max(len(template_ids) - 1)
        unknown = template_ids[pos] != ids_t
    if bool(unknown.any()):
        bad = torch.unique(ids_t[unknown])
        first = torch.nonzero(unknown)[0].item()
        shown = ", ".join(str(int(b)) for b in bad[:10]) + (", ..." if len(bad) > 10 else "")
        where = f"; first on line {first + 1}" if str(source).endswith(".txt") else ""
        raise InputError(
            f"{source}: {len(bad)} template id(s) have no image in the image/template list ({shown}{where}); "
            "the pair/1:N files and *_face_tid_mid.txt must come from the same protocol release"
        )
    return pos


def build_templates(features: ImageFeatures, template_ids: np.ndarray, media_ids: np.ndarray) -> RaggedSets:
    """Group per-image features into one ragged set per template (ascending template id).

    Raises:
        InputError: the feature rows and the image list differ in length.
    """
    if features.num_images != len(template_ids):
        raise InputError(
            f"{features.num_images} feature rows but {len(template_ids)} images in the image/template list; "
            "the features must have one row per image line, in order"
        )
    return RaggedSets.from_template_ids(
        torch.from_numpy(features.features), torch.from_numpy(features.norms),
        torch.from_numpy(np.asarray(template_ids, dtype=np.int64)),
        media=torch.from_numpy(np.asarray(media_ids, dtype=np.int64)),
        faceness=None if features.faceness is None else torch.from_numpy(features.faceness),
    )


def assemble_protocol_data(name: str, templates: RaggedSets, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                           pairs_source: str | Path,
                           one_to_n: dict[str, tuple[np.ndarray, np.ndarray, str | Path]] | None = None,
                           probe: tuple[np.ndarray, np.ndarray, str | Path] | None = None,
                           info: dict[str, Any] | None = None) -> ProtocolData:
    """Build :class:`ProtocolData` from templates and parsed id lists (ids checked, never guessed).

    Args:
        name: protocol name.
        templates: from :func:`build_templates` (``set_ids`` = ascending template ids).
        pairs: (template id 1 [P], template id 2 [P], label [P]).
        pairs_source: the pair file (for messages).
        one_to_n: gallery name -> (template ids, subject ids, source file).
        probe: (template ids, subject ids, source file) of the probes.
        info: extra entries for :meth:`ProtocolData.summary`.
    """
    sets = templates
    left = positions_of(sets.set_ids, pairs[0], pairs_source)
    right = positions_of(sets.set_ids, pairs[1], pairs_source)
    labels = torch.as_tensor(np.asarray(pairs[2]), dtype=torch.int64)
    galleries = {g: IdentificationSet(positions_of(sets.set_ids, t, src), torch.as_tensor(s, dtype=torch.int64))
                 for g, (t, s, src) in (one_to_n or {}).items()}
    probes = None
    if probe is not None:
        probes = IdentificationSet(positions_of(sets.set_ids, probe[0], probe[2]),
                                   torch.as_tensor(probe[1], dtype=torch.int64))
    return ProtocolData(name, sets, left, right, labels, galleries, probes, dict(info or {}))


class Protocol:
    """Base class of protocol plugins (register subclasses under ``facecoreset.protocols``).

    Subclasses set ``name`` and ``Config`` (a frozen dataclass) and implement :meth:`load`.
    ``Protocol(**overrides)`` overlays the config without mutating the defaults.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        base = config if config is not None else self.Config()
        self.config = overlay_config(base, type(self).__name__, **overrides)

    def load(self, data_root: str | Path | None = None, features: str | Path | None = None,
             progress: bool = True) -> ProtocolData:
        """Read meta files under ``data_root`` and per-image ``features`` into :class:`ProtocolData`."""
        raise NotImplementedError
