"""Held-out validation for model selection: a bank of unseen identities, or a named protocol.

Training selects ``best.ckpt`` on one of these, never on the test protocol. A validator is
a callable ``(model, device) -> {metric_name: value}`` with a ``metric`` attribute naming the
value to maximise.
"""

from __future__ import annotations

__all__ = ["ValidationConfig", "BankValidator", "ProtocolValidator", "pairwise_tar_at_far", "metric_name"]

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

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


def metric_name(far: float) -> str:
    """Name of the TAR at ``far`` in validation results, e.g. ``tar@far=1e-04`` (``tar@far=0.25`` if not d*10^k).

    The ``1e-04`` form is what checkpoints and ``best.json`` record; it differs from the report key
    ``eval_protocols.metrics.far_key`` (``"0.0001"``) on purpose.
    """
    short = f"{far:.0e}"
    return f"tar@far={short if float(short) == far else repr(float(far))}"


def pairwise_tar_at_far(desc: Tensor, labels: Tensor, fars: Sequence[float]) -> dict[str, float]:
    """TAR at each FAR (``strict`` rule) over all pairs of template descriptors.

    Args:
        desc: [T,D] template descriptors (unit rows; cosine score = dot product).
        labels: [T] identity of each template; a pair is genuine when the labels match.
        fars: target FARs.

    Returns:
        ``{metric_name(far): tar}``, TAR as a fraction, computed by ``eval_protocols.metrics.tar_at_far``.
    """
    from eval_protocols.metrics import far_key, tar_at_far

    labels = labels.to(desc.device)
    iu = torch.triu_indices(len(desc), len(desc), offset=1, device=desc.device)
    scores = (desc @ desc.T)[iu[0], iu[1]]
    same = labels[iu[0]] == labels[iu[1]]
    num_genuine = int(same.sum())
    if num_genuine == 0 or num_genuine == same.numel():
        raise InputError(f"validation needs genuine and impostor pairs, got {num_genuine} genuine of {same.numel()} "
                         "pairs; hold out at least 2 identities with 2+ templates each")
    table = tar_at_far(scores, same, fars, rule="strict")
    return {metric_name(f): table[far_key(f)] for f in fars}


class BankValidator:
    """Verification TAR@FAR among templates drawn from held-out identities of a bank.

    Templates are drawn once with the training sampler's size range (stills and clips), so
    the metric is comparable across evaluations and resumes.
    """

    def __init__(self, bank: FeatureBank, sampler_config: SamplerConfig = SamplerConfig(),
                 config: ValidationConfig = ValidationConfig()) -> None:
        self.config = config
        self.metric = metric_name(config.select_far)
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
        fars = sorted(set(self.config.fars) | {self.config.select_far})
        return pairwise_tar_at_far(desc, self.labels, fars)


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
        self.metric = metric_name(select_far)
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
                out[metric_name(float(key))] = float(value["tar"] if isinstance(value, dict) else value)
            except (TypeError, ValueError, KeyError):
                continue
        if self.metric not in out:
            raise InputError(f"protocol {self.protocol!r} reports TAR at FARs {sorted(table)}, not at "
                             f"{self.select_far:g}; pick one of those with --val-far")
        return out
