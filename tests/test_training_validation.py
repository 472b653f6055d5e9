"""Held-out validation: TAR@FAR against sklearn's ROC, templates fixed across calls."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_curve

from aggregators.pooling import MeanAggregator, QualityWeightedAggregator
from aggregators.training.bank import FeatureBank
from aggregators.training.sampler import SamplerConfig
from aggregators.training.validation import BankValidator, ValidationConfig, metric_name, pairwise_tar_at_far
from facecoreset_plugin.errors import InputError


def _ref_strict_tar(scores, same, far):
    """sklearn's ROC (every threshold): the largest TPR whose FPR <= far."""
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    return float(tpr[fpr <= far].max())


def test_pairwise_strict_tar_matches_sklearn_at_every_attainable_far():
    g = torch.Generator().manual_seed(1)
    ids, per, d = 10, 4, 6
    labels = torch.arange(ids).repeat_interleave(per)
    centres = torch.randn(ids, d, generator=g, dtype=torch.float64)
    noise = torch.randn(ids * per, d, generator=g, dtype=torch.float64)
    desc = torch.nn.functional.normalize(centres[labels] + 1.3 * noise, dim=-1)
    scores, same = [], []
    for i in range(len(desc)):
        for j in range(i + 1, len(desc)):
            scores.append(float(sum(desc[i, k] * desc[j, k] for k in range(d))))
            same.append(int(labels[i] == labels[j]))
    num_impostor = same.count(0)
    # every FAR a count of false accepts can reach exactly (k / impostors), where rounding far * n bites
    fars = [k / num_impostor for k in range(1, num_impostor + 1)] + [1e-3, 0.05, 0.3]
    got = pairwise_tar_at_far(desc, labels, fars)
    assert got == {metric_name(f): _ref_strict_tar(scores, same, f) for f in fars}
    assert len(got) == len(set(fars))  # one name per FAR


def test_metric_name_is_stable_for_checkpoints_and_unique():
    assert metric_name(1e-4) == "tar@far=1e-04" and metric_name(0.01) == "tar@far=1e-02"
    assert metric_name(0.25) == "tar@far=0.25" and metric_name(0.25) != metric_name(0.2)
    from eval_protocols.metrics import far_key

    assert far_key(1e-4) == "0.0001"  # the report key is a different name, no shadowing


def test_pairwise_tar_needs_genuine_and_impostor_pairs():
    desc = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    with pytest.raises(InputError, match="0 genuine of 6 pairs"):
        pairwise_tar_at_far(desc, torch.arange(4), [1e-2])
    with pytest.raises(InputError, match="6 genuine of 6 pairs"):
        pairwise_tar_at_far(desc, torch.zeros(4, dtype=torch.long), [1e-2])


def test_bank_validator_is_deterministic_and_ranks_aggregators():
    g = torch.Generator().manual_seed(0)
    ids, per, d = 30, 8, 16
    centres = torch.nn.functional.normalize(torch.randn(ids, d, generator=g), dim=-1)
    labels = torch.arange(ids).repeat_interleave(per)
    q = torch.rand(ids * per, generator=g)
    feats = torch.nn.functional.normalize(centres[labels] + torch.randn(ids * per, d, generator=g) * (1.2 - q).unsqueeze(-1), dim=-1)
    bank = FeatureBank(feats, 1 + 40 * q, labels)
    val = BankValidator(bank, SamplerConfig(max_size=6), ValidationConfig(templates_per_identity=3, select_far=1e-3))
    assert val.metric == metric_name(1e-3) == "tar@far=1e-03"
    assert len(val.labels) == 90
    qw, mean = val(QualityWeightedAggregator()), val(MeanAggregator())
    assert qw == val(QualityWeightedAggregator())
    assert qw != mean
    # independent reference: per-set loop for the descriptors, sklearn for the ROC
    sets, desc = val.sets, []
    for i in range(sets.num_sets):
        a, b = int(sets.offsets[i]), int(sets.offsets[i + 1])
        v = (sets.features[a:b] * sets.norms[a:b, None]).sum(0)
        desc.append(v / v.norm())
    desc = torch.stack(desc).double()
    scores, same = [], []
    for i in range(len(desc)):
        for j in range(i + 1, len(desc)):
            scores.append(float(desc[i] @ desc[j]))
            same.append(int(val.labels[i] == val.labels[j]))
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    for far in (1e-3, 1e-2):
        assert qw[metric_name(far)] == pytest.approx(tpr[fpr <= far].max(), abs=1.5 / sum(same))
    assert set(qw) == {metric_name(f) for f in (1e-5, 1e-4, 1e-3, 1e-2)}


def test_protocol_validator_reports_the_runner_strict_tar_and_keeps_training_mode(tmp_path):
    from eval_protocols.runner import evaluate

    from aggregators.training.validation import ProtocolValidator

    val = ProtocolValidator("synthetic", 1e-2, {"data_root": tmp_path, "progress": False},
                            {"preset": "tiny", "seed": 3})
    model = QualityWeightedAggregator().train()
    out = val(model)
    assert model.training and val.metric == "tar@far=1e-02"
    ref = evaluate(val.data, {"q": QualityWeightedAggregator()}, progress=False)["q"]["verification"]
    assert out[val.metric] == ref["tar_at_far"]["strict"]["0.01"]
    assert out[metric_name(1e-3)] == ref["tar_at_far"]["strict"]["0.001"]
