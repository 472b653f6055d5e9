"""A seeded, IJB-like synthetic protocol (same file layout as IJB-C) and a disjoint training bank.

The world model (fixed: a shipped checkpoint is trained against it; change only with the lead):

* **Identities.** Each subject has a unit centre ``c`` in D dimensions, drawn around one of
  ``num_clusters`` shared cluster centres (look-alike groups), so impostor scores have tails.
* **Media.** A template is a list of media: stills (one image) and video clips (several
  frames). Every media has a nuisance direction (pose, light, camera) shared by all its frames;
  the frames of a clip are near-duplicates (one nuisance plus a small per-frame jitter), so a
  long clip over-weights one media in plain pooling.
* **Quality.** Each media draws a quality ``q`` in (0, 1) (clips lower than stills), frames
  jitter around it. Low quality means a weak identity signal, more noise, and a drift toward
  one shared direction ``u`` that all people's poor images move toward (poor images of
  different people look alike: impostor scores rise).
  ``x = a(q) c + b(q) u + s_m m + s_f e + s(q) eps``, feature ``f = x / |x|``,
  ``a(q) = a0 + (1 - a0) q``, ``b(q) = drift (1 - q)^2``, ``s(q) = s_hi + (s_lo - s_hi)(1 - q)``.
* **Norm and faceness.** The feature norm grows with quality (``norm_min + (norm_max -
  norm_min) q`` plus noise): the quality signal AdaFace-style aggregators read. The detector's
  faceness is a noisy sigmoid of quality.
* **Outliers.** A small share of images are detector false positives or wrong crops: a random
  direction plus the drift, with a misleadingly high norm (and a low faceness).
* **Templates.** Sizes follow a long-tailed log-normal, gallery templates larger; template,
  media and subject ids are sparse and non-contiguous; image lines are shuffled.

Every subject has one gallery template (alternating into the two 1:N galleries); probe
templates belong to random subjects; the 1:1 list pairs every probe with its mate's gallery
template (genuine) and with distinct other gallery templates (impostors).
"""

from __future__ import annotations

__all__ = [
    "SyntheticConfig",
    "SyntheticProtocol",
    "generate_protocol",
    "make_training_bank",
    "FEATURES_NAME",
]

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecoreset_plugin.errors import InputError
from facecoreset_plugin.safe_io import atomic_write

from .features_io import write_features
from .ijb_files import IJB_VARIANTS, meta_paths, write_int_table
from .protocol import Protocol, ProtocolData

#: file name of the generated features, beside the variant's meta folder (<root>/IJBC/<name>)
FEATURES_NAME = "synthetic_features.npz"
_STAMP = "synthetic_config.json"
_MEDIA_PER_CHUNK = 4096
_ARCFACE_5PTS = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                          [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and world-model parameters of the synthetic protocol (defaults: the CLI's demo size)."""

    seed: int = 0  # world seed: identities, qualities, features, pairs
    layout: str = "ijbc"  # file layout to write: "ijbc" (galleries G1/G2) or "ijbb" (S1/S2)
    num_subjects: int = 400  # subjects; each has one gallery template
    num_probe_templates: int = 2000  # probe templates (1:1 right side, 1:N probes)
    num_images: int = 30_000  # images over all templates (exact)
    num_pairs: int = 300_000  # 1:1 pairs: one genuine per probe, the rest impostors (exact)
    dim: int = 512  # feature width
    num_clusters: int = 48  # look-alike groups of identities
    cluster_weight: float = 0.45  # share of a subject centre that comes from its cluster centre
    gallery_size_factor: float = 2.0  # gallery templates are this many times larger on average
    size_sigma: float = 1.0  # log-normal spread of template sizes (long tail)
    still_prob: float = 0.55  # chance that a new media is a still rather than a clip
    mean_clip_frames: float = 10.0  # mean frames of a clip (geometric tail, at least 2)
    still_quality: tuple[float, float] = (3.0, 1.8)  # Beta(a, b) of a still's quality
    clip_quality: tuple[float, float] = (1.6, 2.6)  # Beta(a, b) of a clip's quality
    frame_quality_jitter: float = 0.05  # std of a frame's quality around its clip's
    signal_floor: float = 0.2  # a0: identity weight at quality 0 (1 at quality 1)
    drift: float = 0.8  # weight of the shared low-quality direction at quality 0
    media_nuisance: float = 0.45  # weight of the per-media nuisance direction
    frame_jitter: float = 0.08  # weight of the per-frame direction inside a clip
    noise_high_quality: float = 0.3  # noise weight at quality 1
    noise_low_quality: float = 0.8  # noise weight at quality 0
    norm_min: float = 4.0  # feature norm at quality 0
    norm_max: float = 36.0  # feature norm at quality 1
    norm_noise: float = 2.5  # std of the norm around its quality value
    outlier_rate: float = 0.03  # share of images that are false detections / wrong crops
    outlier_norm_quality: tuple[float, float] = (0.55, 1.0)  # outliers' norms look like this quality range

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SyntheticConfig":
        """``"tiny"`` (unit tests), ``"small"``, ``"demo"`` (the CLI default) or ``"ijbc"`` (IJB-C sizes)."""
        sizes = {
            "tiny": dict(num_subjects=40, num_probe_templates=160, num_images=3_000, num_pairs=6_000),
            "small": dict(num_subjects=200, num_probe_templates=1_000, num_images=20_000, num_pairs=100_000),
            "demo": {},
            "ijbc": dict(num_subjects=3_531, num_probe_templates=19_593, num_images=469_375, num_pairs=15_658_489),
        }
        if name not in sizes:
            raise InputError(f"unknown synthetic preset {name!r}; valid: {', '.join(sizes)}")
        return dataclasses.replace(cls(), **{**sizes[name], **overrides})

    def validate(self) -> None:
        """Raise InputError for sizes that cannot form a protocol."""
        if self.layout not in IJB_VARIANTS:
            raise InputError(f"synthetic layout must be one of {', '.join(IJB_VARIANTS)}, got {self.layout!r}")
        templates = self.num_subjects + self.num_probe_templates
        if self.num_subjects < 3 or self.num_probe_templates < 1:
            raise InputError("synthetic protocol needs num_subjects >= 3 and num_probe_templates >= 1")
        if self.num_images < templates:
            raise InputError(f"num_images={self.num_images} must be >= the number of templates ({templates})")
        max_pairs = self.num_probe_templates * self.num_subjects
        if not self.num_probe_templates <= self.num_pairs <= max_pairs:
            raise InputError(f"num_pairs must be between num_probe_templates and {max_pairs}, got {self.num_pairs}")


# --- world model -------------------------------------------------------------------

def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


def _generator(seed: int, *stream: int) -> torch.Generator:
    mixed = seed
    for s in stream:
        mixed = (mixed * 1_000_003 + s + 0x9E3779B9) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


class _World:
    """The seed's shared constants: drift direction and identity clusters."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        g = _generator(cfg.seed, 1)
        self.drift_dir = _unit(torch.randn(cfg.dim, generator=g))
        self.clusters = _unit(torch.randn(cfg.num_clusters, cfg.dim, generator=g))

    def identities(self, n: int, stream: int) -> torch.Tensor:
        """[n, D] unit subject centres; different ``stream`` values give disjoint people."""
        g = _generator(self.cfg.seed, 2, stream)
        cluster = torch.randint(self.cfg.num_clusters, (n,), generator=g)
        own = _unit(torch.randn(n, self.cfg.dim, generator=g))
        w = self.cfg.cluster_weight
        return _unit(w * self.clusters[cluster] + math.sqrt(1 - w * w) * own)


@dataclass
class _Media:
    """Media structure of a collection of containers (templates or training identities)."""

    container: np.ndarray  # [K] container index of each media
    size: np.ndarray  # [K] images per media
    is_clip: np.ndarray  # [K] bool
    quality: np.ndarray  # [K] media quality


def _split_media(sizes: np.ndarray, cfg: SyntheticConfig, rng: np.random.Generator) -> _Media:
    """Split every container's image count into stills and clips."""
    container, msize, clip = [], [], []
    p_frames = 1.0 / max(cfg.mean_clip_frames - 1.0, 1.0)
    for c, total in enumerate(sizes.tolist()):
        left = total
        while left > 0:
            if left == 1 or rng.random() < cfg.still_prob:
                k, is_clip = 1, False
            else:
                k, is_clip = min(left, 1 + int(rng.geometric(p_frames))), True
            container.append(c)
            msize.append(k)
            clip.append(is_clip)
            left -= k
    is_clip = np.array(clip, dtype=bool)
    quality = np.where(is_clip, rng.beta(*cfg.clip_quality, size=len(clip)),
                       rng.beta(*cfg.still_quality, size=len(clip)))
    return _Media(np.array(container, dtype=np.int64), np.array(msize, dtype=np.int64), is_clip, quality)


def _render(world: _World, centres: torch.Tensor, image_subject: np.ndarray, media: _Media,
            stream: int, progress: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features [M,D], norms [M], faceness [M] of images stored media after media.

    ``image_subject`` gives the row of ``centres`` of each image; chunks of media draw from
    their own seeded generators, so the result does not depend on anything but the inputs.
    """
    cfg = world.cfg
    m_total = int(media.size.sum())
    feats = np.empty((m_total, cfg.dim), dtype=np.float32)
    norms = np.empty(m_total, dtype=np.float32)
    faceness = np.empty(m_total, dtype=np.float32)
    media_start = np.concatenate([[0], np.cumsum(media.size)])
    for chunk, k0 in enumerate(range(0, len(media.size), _MEDIA_PER_CHUNK)):
        k1 = min(k0 + _MEDIA_PER_CHUNK, len(media.size))
        r0, r1 = int(media_start[k0]), int(media_start[k1])
        n = r1 - r0
        g = _generator(cfg.seed, 3, stream, chunk)
        rng = _rng(cfg.seed, 3, stream, chunk)
        sizes = media.size[k0:k1]
        local_media = np.repeat(np.arange(k1 - k0), sizes)
        q = media.quality[k0:k1][local_media]
        clip = media.is_clip[k0:k1][local_media]
        q = np.where(clip, q + rng.normal(0.0, cfg.frame_quality_jitter, n), q).clip(0.02, 1.0)
        outlier = rng.random(n) < cfg.outlier_rate
        qt = torch.from_numpy(q.astype(np.float32))[:, None]
        nuisance = _unit(torch.randn(k1 - k0, cfg.dim, generator=g))[torch.from_numpy(local_media)]
        frame = _unit(torch.randn(n, cfg.dim, generator=g))
        noise = _unit(torch.randn(n, cfg.dim, generator=g))
        centre = centres[torch.from_numpy(image_subject[r0:r1])]
        signal = cfg.signal_floor + (1.0 - cfg.signal_floor) * qt
        drift = cfg.drift * (1.0 - qt) ** 2
        sigma = cfg.noise_high_quality + (cfg.noise_low_quality - cfg.noise_high_quality) * (1.0 - qt)
        jitter = cfg.frame_jitter * torch.from_numpy(clip.astype(np.float32))[:, None]
        x = signal * centre + drift * world.drift_dir + cfg.media_nuisance * nuisance + jitter * frame + sigma * noise
        out = torch.from_numpy(outlier)
        if bool(out.any()):
            junk = _unit(torch.randn(int(out.sum()), cfg.dim, generator=g))
            x[out] = junk + cfg.drift * 0.5 * world.drift_dir
        feats[r0:r1] = _unit(x).numpy()
        q_norm = np.where(outlier, rng.uniform(*cfg.outlier_norm_quality, n), q)
        norm = cfg.norm_min + (cfg.norm_max - cfg.norm_min) * q_norm + rng.normal(0.0, cfg.norm_noise, n)
        norms[r0:r1] = np.maximum(norm, 0.5)
        logit = np.where(outlier, rng.normal(-1.5, 1.0, n), 8.0 * (q - 0.3) + rng.normal(0.0, 0.6, n))
        faceness[r0:r1] = 1.0 / (1.0 + np.exp(-logit))
        if progress is not None:
            progress.update(n)
    return feats, norms, faceness


def _template_sizes(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed sizes of gallery templates (first num_subjects) then probes, summing to num_images."""
    n_t = cfg.num_subjects + cfg.num_probe_templates
    scale = np.ones(n_t)
    scale[: cfg.num_subjects] = cfg.gallery_size_factor
    raw = scale * rng.lognormal(0.0, cfg.size_sigma, n_t)
    extra = cfg.num_images - n_t  # every template has at least one image
    sizes = 1 + np.floor(raw / raw.sum() * extra).astype(np.int64)
    short = cfg.num_images - int(sizes.sum())
    if short > 0:
        sizes[rng.choice(n_t, size=short, replace=False, p=raw / raw.sum())] += 1
    return sizes


def _sparse_ids(n: int, rng: np.random.Generator, spread: int = 9) -> np.ndarray:
    """``n`` distinct positive ids with gaps, in random order."""
    ids = rng.choice(spread * n + 100, size=n, replace=False) + 1
    return ids.astype(np.int64)


def _impostor_pairs(cfg: SyntheticConfig, probe_subject: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per probe, distinct gallery templates of other subjects (as gallery rows), ``num_pairs`` in all with the genuine ones."""
    g, p = cfg.num_subjects, cfg.num_probe_templates
    per_probe = np.full(p, (cfg.num_pairs - p) // p, dtype=np.int64)
    per_probe[: (cfg.num_pairs - p) % p] += 1
    kmax = int(per_probe.max())
    if kmax == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # an arithmetic progression modulo g with a step coprime to g visits distinct rows
    coprime = np.array([s for s in range(1, g) if math.gcd(s, g) == 1])
    step = rng.choice(coprime, size=p)
    start = rng.integers(0, g, size=p)
    rows = (start[:, None] + np.arange(kmax + 1)[None, :] * step[:, None]) % g
    keep = rows != probe_subject[:, None]  # gallery row s belongs to subject s
    keep &= np.cumsum(keep, axis=1) <= per_probe[:, None]
    probe_idx = np.broadcast_to(np.arange(p)[:, None], rows.shape)[keep]
    return probe_idx, rows[keep]


# --- files ----------------------------------------------------------------------------

def _write_5pts(path: Path, order: np.ndarray, faceness: np.ndarray, rng: np.random.Generator) -> None:
    m = len(order)
    pts = (_ARCFACE_5PTS[None] * 1.6 + 20.0 + rng.normal(0.0, 2.0, (m, 5, 2))).reshape(m, 10).clip(0, 999)
    cents = np.round(pts * 100).astype(np.int64)
    cols, seps, widths = [np.arange(1, m + 1)], [b".jpg "], [1]
    for j in range(10):
        cols += [cents[:, j] // 100, cents[:, j] % 100]
        seps += [b".", b" "]
        widths += [1, 2]
    f4 = np.round(faceness.astype(np.float64) * 10_000).astype(np.int64).clip(0, 10_000)
    cols += [f4 // 10_000, f4 % 10_000]
    seps += [b".", b"\n"]
    widths += [1, 4]
    write_int_table(path, cols, seps, widths)


def _write_csv(path: Path, tids: np.ndarray, sids: np.ndarray, images: np.ndarray) -> None:
    write_int_table(path, [tids, sids, images], [b",", b",img/", b".jpg\n"],
                    header=b"TEMPLATE_ID,SUBJECT_ID,FILENAME\n")


def generate_protocol(root: str | Path, config: SyntheticConfig | None = None, progress: bool = True) -> Path:
    """Write the synthetic protocol under ``root`` in the insightface layout; return the feature file.

    Reuses files already generated under ``root`` with the same config.
    """
    from tqdm.auto import tqdm

    cfg = config or SyntheticConfig()
    cfg.validate()
    paths = meta_paths(root, cfg.layout)
    feat_path = paths.meta_dir.parent / FEATURES_NAME
    stamp = paths.meta_dir.parent / _STAMP
    wanted = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    if stamp.is_file() and feat_path.is_file() and stamp.read_text() == wanted:
        return feat_path
    if not stamp.is_file() and paths.meta_dir.is_dir() and any(paths.meta_dir.iterdir()):
        raise InputError(
            f"{paths.meta_dir} already holds files that the synthetic protocol did not write; refusing "
            "to overwrite them. Did you mean --protocol ijbb/ijbc? Otherwise pick an empty --data-root."
        )
    rng = _rng(cfg.seed, 10)
    world = _World(cfg)
    n_gal, n_probe = cfg.num_subjects, cfg.num_probe_templates
    centres = world.identities(n_gal, stream=0)
    sizes = _template_sizes(cfg, rng)
    probe_subject = rng.integers(0, n_gal, size=n_probe)
    template_subject = np.concatenate([np.arange(n_gal), probe_subject])
    media = _split_media(sizes, cfg, rng)
    image_template = np.repeat(media.container, media.size)
    bar = tqdm(total=cfg.num_images, desc="synthetic: features", unit="img", disable=not progress, leave=False)
    feats, norms, faceness = _render(world, centres, template_subject[image_template], media, stream=0, progress=bar)
    bar.close()
    # ids: sparse, non-contiguous; image lines shuffled
    template_ids = _sparse_ids(len(sizes), rng)
    media_ids = _sparse_ids(len(media.size), rng, spread=5)
    subject_ids = _sparse_ids(n_gal, rng, spread=3)
    image_media = np.repeat(np.arange(len(media.size)), media.size)
    order = rng.permutation(cfg.num_images)  # line i of the files is generated image order[i]
    paths.meta_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=5, desc="synthetic: writing", unit="file", disable=not progress, leave=False) as wbar:
        write_int_table(paths.face_tid_mid, [np.arange(1, cfg.num_images + 1), template_ids[image_template[order]],
                                             media_ids[image_media[order]]], [b".jpg ", b" ", b"\n"])
        wbar.update()
        _write_5pts(paths.name_5pts_score, order, faceness[order], rng)
        wbar.update()
        probe_idx, gal_rows = _impostor_pairs(cfg, probe_subject, rng)
        left = np.concatenate([probe_subject, gal_rows])  # gallery row == subject index
        right = np.concatenate([np.arange(n_probe), probe_idx]) + n_gal
        labels = np.concatenate([np.ones(n_probe, np.int64), np.zeros(len(probe_idx), np.int64)])
        shuffle = rng.permutation(len(labels))
        write_int_table(paths.template_pair_label, [template_ids[left[shuffle]], template_ids[right[shuffle]],
                                                    labels[shuffle]])
        wbar.update()
        line_of = np.empty(cfg.num_images, dtype=np.int64)
        line_of[order] = np.arange(1, cfg.num_images + 1)
        gal_names = list(paths.galleries)
        for gi, gname in enumerate(gal_names):
            rows = np.flatnonzero((image_template < n_gal) & (image_template % 2 == gi))
            _write_csv(paths.galleries[gname], template_ids[image_template[rows]],
                       subject_ids[template_subject[image_template[rows]]], line_of[rows])
        rows = np.flatnonzero(image_template >= n_gal)
        _write_csv(paths.probe, template_ids[image_template[rows]], subject_ids[template_subject[image_template[rows]]],
                   line_of[rows])
        wbar.update()
        write_features(feat_path, feats[order], norms[order], faceness[order])
        wbar.update()
    with atomic_write(stamp, "w") as fh:
        fh.write(wanted)
    return feat_path


def make_training_bank(path: str | Path, seed: int = 0, num_identities: int = 2000, images_per_identity: int = 20,
                       config: SyntheticConfig | None = None, progress: bool = True, **overrides: Any) -> Path:
    """Write a training feature bank from the same world model, with identities disjoint from the protocol's.

    Args:
        path: output ``.npz`` with ``features`` [N,D] unit rows, ``norms`` [N], ``labels`` [N] identity
            index (0..num_identities-1), ``media`` [N] media id (frames of one clip share it),
            ``faceness`` [N] and ``quality`` [N] (the hidden quality, for analysis only).
        seed: world seed; use the seed of the protocol you evaluate on (same drift direction and
            clusters, different people).
        num_identities: identities in the bank.
        images_per_identity: images per identity, split into stills and clips like templates.
        config: world-model parameters (sizes are ignored); ``seed`` overrides its seed.
        progress: show a progress bar.
        **overrides: world-model fields overlaid on ``config``.
    """
    from tqdm.auto import tqdm

    cfg = dataclasses.replace(config or SyntheticConfig(), seed=seed, **overrides)
    if num_identities < 1 or images_per_identity < 1:
        raise InputError("make_training_bank needs num_identities >= 1 and images_per_identity >= 1")
    world = _World(cfg)
    centres = world.identities(num_identities, stream=1)  # stream 0 is the protocol's subjects
    rng = _rng(cfg.seed, 20)
    media = _split_media(np.full(num_identities, images_per_identity), cfg, rng)
    subject = np.repeat(media.container, media.size)
    bar = tqdm(total=int(media.size.sum()), desc="synthetic: training bank", unit="img", disable=not progress,
               leave=False)
    feats, norms, faceness = _render(world, centres, subject, media, stream=1, progress=bar)
    bar.close()
    quality = np.repeat(media.quality, media.size).astype(np.float32)
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise InputError(f"make_training_bank writes .npz; got {path}")
    with atomic_write(path) as fh:
        np.savez(fh, features=feats, norms=norms, labels=subject.astype(np.int64),
                 media=np.repeat(np.arange(len(media.size)), media.size).astype(np.int64),
                 faceness=faceness, quality=quality)
    return path


class SyntheticProtocol(Protocol):
    """The seeded IJB-like protocol: generates its files (cached per root and config) and loads them.

    ``SyntheticProtocol(preset="tiny", seed=1)`` or any :class:`SyntheticConfig` field as override.
    """

    name = "synthetic"
    Config = SyntheticConfig

    def __init__(self, config: SyntheticConfig | None = None, preset: str | None = None, **overrides: Any) -> None:
        if preset is not None:
            config = SyntheticConfig.preset(preset)
        super().__init__(config, **overrides)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def generate(self, root: str | Path, progress: bool = True) -> Path:
        """Write the protocol files under ``root``; return the feature file."""
        return generate_protocol(root, self.config, progress)

    def load(self, data_root: str | Path | None = None, features: str | Path | None = None,
             progress: bool = True) -> ProtocolData:
        """Generate under ``data_root`` (a temporary folder when None) unless present, then read it back."""
        from .ijb import load_ijb

        if data_root is None:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="facecoreset-synthetic-")
            data_root = self._tmp.name
        generated = self.generate(data_root, progress)
        data = load_ijb(self.config.layout, data_root, features or generated, progress=progress, name=self.name)
        data.info["synthetic_config"] = dataclasses.asdict(self.config)
        return data
