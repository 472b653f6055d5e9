"""Held-out validation: TAR@FAR against sklearn's ROC, templates fixed across calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from aggregators.pooling import MeanAggregator, QualityWeightedAggregator
from aggregators.training.bank import FeatureBank
from aggregators.training.sampler import SamplerConfig
from aggregators.training.validation import BankValidator, ValidationConfig, far_key, tar_at_far_strict


@pytest.mark.parametrize("far", [1e-3, 1e-2, 0.05, 0.3])
def test_strict_tar_matches_sklearn_roc(far):
    g = torch.Generator().manual_seed(1)
    gen = torch.randn(300, generator=g) + 1.5
    imp = torch.randn(3000, generator=g)
    imp[:10] = imp[10]  # ties among impostors
    scores = torch.cat([gen, imp]).numpy()
    labels = np.r_[np.ones(300), np.zeros(3000)]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    expected = tpr[fpr <= far].max()
    assert tar_at_far_strict(gen, imp, far) == pytest.approx(expected)


def test_bank_validator_is_deterministic_and_ranks_aggregators():
    g = torch.Generator().manual_seed(0)
    ids, per, d = 30, 8, 16
    centres = torch.nn.functional.normalize(torch.randn(ids, d, generator=g), dim=-1)
    labels = torch.arange(ids).repeat_interleave(per)
    q = torch.rand(ids * per, generator=g)
    feats = torch.nn.functional.normalize(centres[labels] + torch.randn(ids * per, d, generator=g) * (1.2 - q).unsqueeze(-1), dim=-1)
    bank = FeatureBank(feats, 1 + 40 * q, labels)
    val = BankValidator(bank, SamplerConfig(max_size=6), ValidationConfig(templates_per_identity=3, select_far=1e-3))
    assert val.metric == far_key(1e-3) == "tar@far=1e-03"
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
        assert qw[far_key(far)] == pytest.approx(tpr[fpr <= far].max(), abs=1.5 / sum(same))
    assert set(qw) == {far_key(f) for f in (1e-5, 1e-4, 1e-3, 1e-2)}


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
    assert out[far_key(1e-3)] == ref["tar_at_far"]["strict"]["0.001"]
