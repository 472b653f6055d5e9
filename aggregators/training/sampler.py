"""Training set sampler: identity-balanced batches of face sets of random size.

Every batch is a pure function of ``(seed, step, rank)``: resuming at step ``s`` replays
exactly the batches an uninterrupted run would have drawn, and DDP ranks draw disjoint
identities. A set of size T ~ U[min_size, max_size] mixes *stills* (random images of the
identity) and *simulated clips* (2..max_clip_len near-duplicates of one seed image: distinct
augmented views when the bank has them, frames of one media when it has media ids, else the
seed feature jittered on the sphere).
"""

from __future__ import annotations

__all__ = ["SamplerConfig", "SetSampler", "TrainingBatch"]

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from facecoreset_plugin.errors import InputError

from .bank import FeatureBank


@dataclass(frozen=True)
class SamplerConfig:
    """How training sets are drawn."""

    min_size: int = 1  # smallest set size T
    max_size: int = 20  # largest set size T (T is uniform in [min_size, max_size])
    sets_per_batch: int = 20  # sets per process and step (one identity each)
    clip_prob: float = 0.5  # chance that the next element group is a simulated clip
    max_clip_len: int = 3  # longest simulated clip (near-duplicates of one seed image)
    jitter: float = 0.05  # std of the feature noise of a jittered clip frame (no views/media)
    norm_jitter: float = 0.05  # relative std of the norm noise of a jittered clip frame

    def validate(self) -> "SamplerConfig":
        if not 1 <= self.min_size <= self.max_size:
            raise InputError(f"set sizes need 1 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.sets_per_batch < 1:
            raise InputError(f"sets_per_batch must be >= 1, got {self.sets_per_batch}")
        if not 0 <= self.clip_prob <= 1 or self.max_clip_len < 1:
            raise InputError(f"need 0 <= clip_prob <= 1 and max_clip_len >= 1, got {self.clip_prob}, {self.max_clip_len}")
        return self


@dataclass
class TrainingBatch:
    """A padded batch of training sets with their class targets."""

    features: Tensor  # [B,N,D] unit rows
    norms: Tensor  # [B,N]
    mask: Tensor  # [B,N] bool
    targets: Tensor  # [B] int64 class index (0..C-1 of the bank)

    def to(self, device: torch.device | str) -> "TrainingBatch":
        return TrainingBatch(*(t.to(device, non_blocking=True) for t in dataclasses.astuple(self)))


def _seeded(*parts: int) -> torch.Generator:
    key = 0
    for p in parts:  # a simple, stable mix of the parts into one 63-bit seed
        key = (key * 1_000_003 + int(p) + 0x9E3779B97F4A7C15) % (1 << 63)
    return torch.Generator().manual_seed(key)


class SetSampler:
    """Draws :class:`TrainingBatch` es from a :class:`FeatureBank`.

    Args:
        bank: the training bank.
        config: sampler options.
        seed: the run's seed.
        rank: this process' DDP rank.
        world_size: number of DDP processes.
    """

    def __init__(self, bank: FeatureBank, config: SamplerConfig = SamplerConfig(), seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.bank, self.config, self.seed = bank, config.validate(), seed
        self.rank, self.world_size = rank, world_size
        order = torch.argsort(bank.classes, stable=True)
        counts = torch.bincount(bank.classes, minlength=bank.num_classes)
        self._rows = order  # image rows grouped by class
        self._starts = (torch.cumsum(counts, 0) - counts).tolist()
        self._counts = counts.tolist()
        self._media_groups = self._group_media() if bank.media is not None else None
        per_step = config.sets_per_batch * world_size
        if bank.num_classes < per_step:
            raise InputError(f"{bank.source}: {bank.num_classes} identities < {per_step} sets per step "
                             f"({config.sets_per_batch} x {world_size} processes); lower --batch-sets")
        self.steps_per_epoch = bank.num_classes // per_step

    def _group_media(self) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for row, m in enumerate(self.bank.media.tolist()):
            groups.setdefault(m, []).append(row)
        return {m: rows for m, rows in groups.items() if len(rows) > 1}

    def identities(self, step: int) -> Tensor:
        """Class indices of this rank's sets at ``step`` (each identity once per epoch)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.bank.num_classes, generator=_seeded(self.seed, epoch, 17))
        b = self.config.sets_per_batch
        start = (pos * self.world_size + self.rank) * b
        return perm[start:start + b]

    def batch(self, step: int) -> TrainingBatch:
        """The batch of this rank at optimizer step ``step``."""
        g = _seeded(self.seed, step, self.rank, 29)
        classes = self.identities(step)
        sets = [self.set_tensors(int(c), g) for c in classes.tolist()]
        width = max(len(n) for _, n in sets)
        b, d = len(sets), self.bank.dim
        feats = torch.zeros(b, width, d)
        norms = torch.zeros(b, width)
        mask = torch.zeros(b, width, dtype=torch.bool)
        for i, (f, n) in enumerate(sets):
            feats[i, :len(n)], norms[i, :len(n)], mask[i, :len(n)] = f, n, True
        return TrainingBatch(feats, norms, mask, classes.clone())

    def set_tensors(self, cls: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Features [T,D] and norms [T] of one random set of identity ``cls``."""
        rows, views, jittered = self.draw_set(cls, g)
        r, v, jit = torch.tensor(rows), torch.tensor(views), torch.tensor(jittered)
        f, n = self.bank.features[r, v], self.bank.norms[r, v]
        k = int(jit.sum())
        if k:
            cfg, d = self.config, self.bank.dim
            f, n = f.clone(), n.clone()
            noise = torch.randn(k, d, generator=g) * (cfg.jitter / d ** 0.5)
            f[jit] = torch.nn.functional.normalize(f[jit] + noise, dim=-1)
            n[jit] = n[jit] * (1 + cfg.norm_jitter * torch.randn(k, generator=g)).clamp_min(0.1)
        return f, n

    def draw_set(self, cls: int, g: torch.Generator) -> tuple[list[int], list[int], list[bool]]:
        """Rows, view indices and jitter flags of one set of identity ``cls``."""
        cfg, nv = self.config, self.bank.num_views
        size = int(torch.randint(cfg.min_size, cfg.max_size + 1, (1,), generator=g))
        start, count = self._starts[cls], self._counts[cls]
        uniform = lambda hi: int(torch.randint(0, hi, (1,), generator=g))  # noqa: E731
        rows: list[int] = []
        views: list[int] = []
        jittered: list[bool] = []
        while len(rows) < size:
            seed_row = int(self._rows[start + uniform(count)])
            left = size - len(rows)
            clip = left > 1 and cfg.max_clip_len > 1 and float(torch.rand(1, generator=g)) < cfg.clip_prob
            if not clip:
                rows.append(seed_row), views.append(uniform(nv)), jittered.append(False)
                continue
            length = min(left, 2 + uniform(cfg.max_clip_len - 1))
            media = None if self._media_groups is None else self._media_groups.get(int(self.bank.media[seed_row]))
            if nv > 1:  # distinct augmented views of the seed image
                pick = torch.randperm(nv, generator=g)[:length].tolist()
                rows += [seed_row] * len(pick)
                views += pick
                jittered += [False] * len(pick)
            elif media is not None:  # frames of the seed's video clip
                frames = [media[i] for i in torch.randperm(len(media), generator=g)[:length].tolist()]
                rows += frames
                views += [0] * len(frames)
                jittered += [False] * len(frames)
            else:  # the seed plus jittered copies of it
                rows += [seed_row] * length
                views += [0] * length
                jittered += [False] + [True] * (length - 1)
        return rows, views, jittered
