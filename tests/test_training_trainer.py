"""Trainer: learning happens, resume is exact, --max-minutes stops cleanly, checkpoints load."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from aggregators.training.bank import FeatureBank
from aggregators.training.heads import HeadConfig
from aggregators.training.sampler import SamplerConfig
from aggregators.training.trainer import TrainConfig, export_checkpoint, train
from aggregators.training.validation import BankValidator
from facecoreset_plugin import load, read_checkpoint
from facecoreset_plugin.aggregator import Aggregator
from facecoreset_plugin.errors import CheckpointError, InputError


@dataclass(frozen=True)
class AttnPoolConfig:
    """Options of the toy trainable aggregator."""

    dim: int = 16  # feature width
    hidden: int = 8  # scorer width
    dropout: float = 0.1  # dropout in the scorer (exercises the per-step RNG)


class AttnPool(Aggregator):
    """Toy trainable aggregator: softmax attention weights from (f, log n) over n*f."""

    name = "attn_pool"
    Config = AttnPoolConfig
    trainable = True

    def __init__(self, config=None, **overrides) -> None:
        super().__init__(config, **overrides)
        c = self.config
        self.score = nn.Sequential(nn.Linear(c.dim + 1, c.hidden), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(c.hidden, 1))

    def aggregate(self, features, norms, mask, media, faceness):
        x = torch.cat([features, torch.log1p(norms).unsqueeze(-1)], dim=-1)
        logits = self.score(x).squeeze(-1).masked_fill(~mask, -1e9)
        w = torch.softmax(logits, dim=1) * mask
        return ((w * norms).unsqueeze(-1) * features).sum(1)


def toy_bank(num_ids: int = 40, per_id: int = 8, dim: int = 16, seed: int = 0) -> FeatureBank:
    """Identities around random centres; low-norm images are noisy (norm = quality)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=g), dim=-1)
    labels = torch.arange(num_ids).repeat_interleave(per_id)
    quality = torch.rand(len(labels), generator=g)
    noise = torch.randn(len(labels), dim, generator=g) * (0.2 + 1.5 * (1 - quality)).unsqueeze(-1)
    feats = torch.nn.functional.normalize(centres[labels] + noise / dim ** 0.5 * 2, dim=-1)
    return FeatureBank(feats, 5 + 40 * quality, labels * 7 + 3)


def small_config(**kw) -> TrainConfig:
    base = TrainConfig(steps=12, eval_every=4, checkpoint_every=4, lr=3e-3,
                       sampler=SamplerConfig(max_size=6, sets_per_batch=8), head=HeadConfig(scale=16.0))
    return dataclasses.replace(base, **kw)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_lowers_loss_and_writes_loadable_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = AttnPool()
    val = BankValidator(toy_bank(10, 6, seed=1))
    cfg = small_config(steps=60, eval_every=20, checkpoint_every=20)
    result = train(model, toy_bank(), tmp_path, cfg, validator=val, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert result.step == 60 and not result.stopped_early
    assert losses[-1] < losses[0]
    assert result.metric == "tar@far=1e-04"
    assert result.best_metric == max(row[result.metric] for row in result.history)
    best = load(AttnPool, checkpoint=str(tmp_path / "best.ckpt"))
    last = load(AttnPool, checkpoint=str(tmp_path / "last.ckpt"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(last.state_dict()[k], v)
    ex = read_checkpoint(tmp_path / "best.ckpt")["extra"]
    assert ex["step"] == result.best_step
    plain = torch.load(tmp_path / "last.ckpt", weights_only=True)  # plain data only, no pickled objects
    assert plain["extra"]["step"] == 60 and "optimizer" in plain["extra"]
    assert isinstance(best, AttnPool) and not best.training


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    bank, cfg = toy_bank(), small_config()
    torch.manual_seed(0)
    straight = AttnPool()
    train(straight, bank, tmp_path / "a", cfg, progress=False)
    torch.manual_seed(0)
    first = AttnPool()
    train(first, bank, tmp_path / "b", dataclasses.replace(cfg, steps=8), progress=False)  # "killed" after 8
    torch.manual_seed(123)  # a fresh process: different random init, restored from last.ckpt
    resumed = AttnPool()
    result = train(resumed, bank, tmp_path / "b", cfg, progress=False)
    assert result.step == 12
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    a = read_checkpoint(tmp_path / "a" / "last.ckpt")["extra"]
    b = read_checkpoint(tmp_path / "b" / "last.ckpt")["extra"]
    for k, v in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][k]["exp_avg"], v["exp_avg"], rtol=0, atol=0)
    torch.testing.assert_close(b["head"]["kernel"], a["head"]["kernel"], rtol=0, atol=0)


def test_same_seed_same_weights_different_seed_different(tmp_path):
    bank = toy_bank()
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        torch.manual_seed(0)
        model = AttnPool()
        train(model, bank, tmp_path / str(i), small_config(seed=seed, steps=5), progress=False)
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_max_minutes_stops_cleanly_keeping_best(tmp_path):
    torch.manual_seed(0)
    cfg = small_config(steps=10_000, max_minutes=0.02, eval_every=10_000, checkpoint_every=10_000)
    result = train(AttnPool(), toy_bank(), tmp_path, cfg, validator=BankValidator(toy_bank(8, 5, seed=2)),
                   progress=False)
    assert result.stopped_early and 0 < result.step < 10_000
    assert (tmp_path / "best.ckpt").exists() and (tmp_path / "last.ckpt").exists()
    assert read_checkpoint(tmp_path / "last.ckpt")["extra"]["step"] == result.step
    assert result.history[-1]["step"] == result.step


def test_resume_refuses_a_different_run_setup(tmp_path):
    torch.manual_seed(0)
    train(AttnPool(), toy_bank(), tmp_path, small_config(steps=4), progress=False)
    with pytest.raises(CheckpointError, match="different"):
        train(AttnPool(), toy_bank(), tmp_path, small_config(steps=8, seed=5), progress=False)


def test_untrainable_model_and_bad_options_are_user_errors(tmp_path):
    from aggregators.pooling import QualityWeightedAggregator

    with pytest.raises(InputError, match="no trainable parameters"):
        train(QualityWeightedAggregator(), toy_bank(), tmp_path, small_config(), progress=False)
    with pytest.raises(InputError, match="steps"):
        train(AttnPool(), toy_bank(), tmp_path, small_config(steps=0), progress=False)


def test_bad_device_is_a_user_error_before_any_work(tmp_path):
    with pytest.raises(InputError, match="'cuda:abc' is not a device"):
        train(AttnPool(), toy_bank(), tmp_path, small_config(), device="cuda:abc", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            train(AttnPool(), toy_bank(), tmp_path, small_config(), device="cuda", progress=False)
    assert not (tmp_path / "last.ckpt").exists()


def test_export_writes_half_weights_that_load_in_float32(tmp_path):
    torch.manual_seed(0)
    model = AttnPool()
    train(model, toy_bank(), tmp_path, small_config(steps=4), progress=False)
    out = export_checkpoint(tmp_path / "best.ckpt", tmp_path / "slim.ckpt")
    raw = read_checkpoint(out)
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values())
    assert "optimizer" not in raw["extra"]
    slim = load(AttnPool, checkpoint=str(out))
    for k, v in slim.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, model.state_dict()[k], atol=2e-3, rtol=2e-3)
    assert out.stat().st_size < (tmp_path / "best.ckpt").stat().st_size
