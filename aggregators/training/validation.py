"""Held-out validation for model selection: a bank of unseen identities, or a named protocol.

Training selects ``best.ckpt`` on one of these, never on the test protocol. A validator is
a callable ``(model, device) -> {metric_name: value}`` with a ``metric`` attribute naming the
value to maximise.
"""

from __future__ import annotations

__all__ = ["ValidationConfig", "BankValidator", "ProtocolValidator", "tar_at_far_strict", "far_key"]

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from facecoreset_plugin.batching import RaggedSets
from facecoreset_plugin.errors import InputError

from .bank import FeatureBank
from .sampler import SamplerConfig, SetSampler, _seeded


@dataclass(frozen=True)
class ValidationConfig:
    """Held-out bank validation options."""

    templates_per_identity: int = 4  # templates drawn per held-out identity
    fars: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)  # FARs reported (strict rule: FPR <= FAR)
    select_far: float = 1e-4  # the FAR whose TAR selects best.ckpt
    seed: int = 12345  # fixes the held-out templates across runs and resumes


def far_key(far: float) -> str:
    """Metric name of TAR at ``far``, e.g. ``tar@far=1e-04``."""
    return f"tar@far={far:.0e}"


def tar_at_far_strict(genuine: Tensor, impostor: Tensor, far: float) -> float:
    """Largest TAR whose FAR is <= ``far`` (threshold: accept scores strictly above it)."""
    if genuine.numel() == 0 or impostor.numel() == 0:
        raise InputError("validation needs genuine and impostor pairs; hold out at least 2 identities")
    allowed = int(far * impostor.numel())  # false accepts allowed
    top = torch.topk(impostor.double(), min(allowed + 1, impostor.numel())).values
    threshold = top[-1] if allowed < impostor.numel() else top[-1] - 1
    return float((genuine.double() > threshold).double().mean())


class BankValidator:
    """Verification TAR@FAR among templates drawn from held-out identities of a bank.

    Templates are drawn once with the training sampler's size range (stills and clips), so
    the metric is comparable across evaluations and resumes.
    """

    def __init__(self, bank: FeatureBank, sampler_config: SamplerConfig = SamplerConfig(),
                 config: ValidationConfig = ValidationConfig()) -> None:
        self.config = config
        self.metric = far_key(config.select_far)
        one = dataclasses.replace(sampler_config, sets_per_batch=1)
        sampler = SetSampler(bank, one, seed=config.seed, world_size=1)
        g = _seeded(config.seed, 7)
        feats, norms, offsets, labels = [], [], [0], []
        for cls in range(bank.num_classes):
            for _ in range(config.templates_per_identity):
                f, n = sampler.set_tensors(cls, g)
                feats.append(f), norms.append(n), labels.append(cls)
                offsets.append(offsets[-1] + len(n))
        self.sets = RaggedSets(torch.cat(feats), torch.cat(norms), torch.tensor(offsets))
        self.labels = torch.tensor(labels)

    @torch.no_grad()
    def __call__(self, model: Any, device: torch.device | str = "cpu") -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            desc, _ = model.aggregate_ragged(self.sets, device=device)
        finally:
            model.train(was_training)
        scores = desc @ desc.T
        iu = torch.triu_indices(len(desc), len(desc), offset=1)
        pair_scores = scores[iu[0], iu[1]]
        same = self.labels[iu[0]] == self.labels[iu[1]]
        gen, imp = pair_scores[same], pair_scores[~same]
        fars = sorted(set(self.config.fars) | {self.config.select_far})
        return {far_key(f): tar_at_far_strict(gen, imp, f) for f in fars}


class ProtocolValidator:
    """TAR@FAR of the model on a protocol the user names (e.g. a synthetic validation split).

    Args:
        protocol: a registered protocol name (``available("protocols")``).
        select_far: the FAR whose TAR (``strict`` rule) selects ``best.ckpt``.
        load_kwargs: keyword arguments of the protocol's ``load`` (data root, features file).
        protocol_kwargs: options of the protocol's constructor.
    """

    def __init__(self, protocol: str, select_far: float = 1e-4, load_kwargs: dict[str, Any] | None = None,
                 protocol_kwargs: dict[str, Any] | None = None) -> None:
        from facecoreset_plugin import load_protocol

        self.protocol = protocol
        self.metric = far_key(select_far)
        self.select_far = select_far
        runner = load_protocol(protocol, **(protocol_kwargs or {}))
        self.data = runner.load(**(load_kwargs or {}))

    @torch.no_grad()
    def __call__(self, model: Any, device: torch.device | str = "cpu") -> dict[str, float]:
        from eval_protocols.runner import evaluate

        was_training = model.training
        model.eval()
        try:
            from eval_protocols.metrics import FARS

            fars = sorted(set(FARS) | {self.select_far})
            results = evaluate(self.data, {"model": model}, device=device, fars=fars, progress=False)
        finally:
            model.train(was_training)
        table = results["model"]["verification"]["tar_at_far"]["strict"]
        out = {}
        for key, value in table.items():
            try:
                out[far_key(float(key))] = float(value["tar"] if isinstance(value, dict) else value)
            except (TypeError, ValueError, KeyError):
                continue
        if self.metric not in out:
            raise InputError(f"protocol {self.protocol!r} reports TAR at FARs {sorted(table)}, not at "
                             f"{self.select_far:g}; pick one of those with --val-far")
        return out
