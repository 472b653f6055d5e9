"""coreset_attention (FaceCoresetNet) and coreset_fps: faithfulness to the official eval forward,
batching, order, training-mode gradients, checkpoints (ours and the official Lightning file)."""

from __future__ import annotations

import builtins
import dataclasses

import pytest
import torch

from aggregators.coreset import CoresetAttentionAggregator, CoresetFPSAggregator
from aggregators.coreset_reference import OfficialCoresetReference
from facecoreset_plugin import CheckpointError, InputError, RaggedSets, load, save_checkpoint

SMALL = dict(dim=64, heads=4)


def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Random non-trivial weights everywhere (biases and LayerNorm affine included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def _model(cls=CoresetAttentionAggregator, seed=0, **cfg):
    torch.manual_seed(seed)
    return _perturb(cls(**cfg), seed).eval()


# -- faithfulness -------------------------------------------------------------------------


def _assert_matches_reference(model, ref, batch, sizes):
    """Batched descriptors and norms equal the per-set reference's (batch 1, no padding)."""
    f, n, m, _, _ = batch
    unit, norm = model.embed(f, n, m)
    for b, size in enumerate(sizes):
        want, want_norm = ref(f[b:b + 1, :size], n[b:b + 1, :size])
        torch.testing.assert_close(unit[b:b + 1], want, rtol=0, atol=2e-6)
        torch.testing.assert_close(norm[b:b + 1], want_norm, rtol=2e-6, atol=0)

def test_eval_forward_matches_the_official_reference_per_set(make_sets):
    sizes = [1, 2, 3, 4, 50, 500]
    model = _model()
    ref = OfficialCoresetReference.from_aggregator(model)
    _assert_matches_reference(model, ref, make_sets(sizes, dim=512, seed=11), sizes)


def test_fps_ablation_is_the_mean_of_the_reference_picks(make_sets):
    sizes = [1, 2, 3, 4, 30]
    model = _model(CoresetFPSAggregator, gamma_init=0.2)
    ref = OfficialCoresetReference(dim=16, heads=2, k=3)
    ref.gamma.data.fill_(0.2)
    f, n, m, _, _ = make_sets(sizes, dim=16, seed=12)
    got = model(f, n, m)
    for b, size in enumerate(sizes):
        x = f[b:b + 1, :size] * n[b:b + 1, :size, None]
        core = ref.fps(x, n[b:b + 1, :size]).mean(1)
        torch.testing.assert_close(got[b:b + 1], core / core.norm(), rtol=0, atol=1e-6)


# -- batching and order -------------------------------------------------------------------

@pytest.mark.parametrize("cls", [CoresetAttentionAggregator, CoresetFPSAggregator])
def test_batch_equals_single(make_sets, cls):
    sizes = [1, 2, 3, 4, 57]
    model = _model(cls, **(SMALL if cls is CoresetAttentionAggregator else {}))
    f, n, m, _, _ = make_sets(sizes, dim=64, seed=13)
    unit, norm = model.embed(f, n, m)
    for b, size in enumerate(sizes):
        alone, alone_norm = model.embed(f[b:b + 1, :size], n[b:b + 1, :size])
        torch.testing.assert_close(unit[b:b + 1], alone, rtol=0, atol=1e-6)
        torch.testing.assert_close(norm[b:b + 1], alone_norm, rtol=1e-6, atol=0)


def test_ragged_path_equals_reference(make_sets):
    sizes = [5, 1, 40, 2, 3, 9]
    model = _model(**SMALL)
    ref = OfficialCoresetReference.from_aggregator(model)
    f, n, m, _, _ = make_sets(sizes, dim=64, seed=14)
    rows = m.nonzero(as_tuple=True)
    sets = RaggedSets(f[rows], n[rows], torch.cumsum(torch.tensor([0] + sizes), 0))
    unit, norm = model.aggregate_ragged(sets, max_elements=64)
    for b, size in enumerate(sizes):
        want, want_norm = ref(f[b:b + 1, :size], n[b:b + 1, :size])
        torch.testing.assert_close(unit[b:b + 1], want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("cls", [CoresetAttentionAggregator, CoresetFPSAggregator])
def test_order_invariance(make_sets, cls):
    model = _model(cls, **(SMALL if cls is CoresetAttentionAggregator else {}))
    f, n, m, _, _ = make_sets([33], dim=64, seed=15)
    perm = torch.randperm(33, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(f, n, m), model(f[:, perm], n[:, perm], m[:, perm]), rtol=0, atol=1e-6)


# -- training and eval modes --------------------------------------------------------------

def test_training_mode_gradients_reach_gamma_and_every_weight(make_sets):
    model = _model(**SMALL).train()
    f, n, m, _, _ = make_sets([6, 2, 9], dim=64, seed=16)
    f.requires_grad_(True)
    torch.manual_seed(0)
    unit, norm = model.embed(f, n, m)
    (unit @ torch.randn(64) + 0.01 * norm).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(f.grad).all() and (f.grad[~m] == 0).all()


def test_training_is_random_but_seeded_and_eval_is_deterministic(make_sets):
    model = _model(**SMALL)
    f, n, m, _, _ = make_sets([40, 7], dim=64, seed=17)
    assert torch.equal(model(f, n, m), model(f, n, m))
    model.train()
    torch.manual_seed(5)
    a = model(f, n, m)
    torch.manual_seed(5)
    assert torch.equal(a, model(f, n, m))
    torch.manual_seed(6)
    assert not torch.allclose(a, model(f, n, m))


def test_official_eval_noise_option_keeps_clear_winners(make_sets):
    f, n, m, _, _ = make_sets([5], dim=64, seed=18)
    n = torch.tensor([[30.0, 10.0, 20.0, 5.0, 25.0]])
    base = _model(**SMALL)
    noisy = CoresetAttentionAggregator(base.config, eval_noise=True).eval()
    noisy.load_state_dict(base.state_dict())
    torch.testing.assert_close(noisy(f, n, m), base(f, n, m), rtol=0, atol=1e-6)


def test_param_groups_put_gamma_alone_without_weight_decay():
    model = _model(**SMALL)
    groups = model.param_groups(1e-3)
    gamma = [g for g in groups if g["name"] == "gamma"]
    assert len(gamma) == 1 and gamma[0]["params"] == [model.gamma] and gamma[0]["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert [g["weight_decay"] for g in groups if g["name"] != "gamma"] == [1e-3]
    torch.optim.AdamW(groups, lr=1e-4)
    assert [g["name"] for g in CoresetFPSAggregator().param_groups(0.1)] == ["gamma"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_stays_close_to_float32(make_sets, dtype):
    model = _model(**SMALL)
    f, n, m, _, _ = make_sets([1, 3, 20], dim=64, seed=19)
    want = model(f, n, m)
    with torch.autocast("cpu", dtype=dtype):
        got = model(f, n, m)
    assert torch.isfinite(got).all()
    assert (torch.nn.functional.cosine_similarity(got.float(), want) > 0.99).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(make_sets):
    model = _model(**SMALL)
    f, n, m, _, _ = make_sets([1, 4, 30], dim=64, seed=20)
    want = model(f, n, m)
    got = model.to("cuda")(f.cuda(), n.cuda(), m.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(model(f.cuda(), n.cuda(), m.cuda())).all()


def test_bad_options_and_widths_get_clear_errors(make_sets):
    with pytest.raises(InputError, match="K"):
        CoresetAttentionAggregator(K=0)
    with pytest.raises(InputError, match="divisible by heads"):
        CoresetAttentionAggregator(dim=60, heads=8)
    with pytest.raises(InputError, match="unknown option"):
        load("coreset_attention", k=3)
    f, n, m, _, _ = make_sets([3], dim=32)
    with pytest.raises(InputError, match="dim=32"):
        CoresetAttentionAggregator(**SMALL)(f, n, m)


# -- checkpoints --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["coreset_attention", "coreset_fps"])
def test_project_checkpoint_round_trip(tmp_path, make_sets, name):
    cls = CoresetAttentionAggregator if name == "coreset_attention" else CoresetFPSAggregator
    model = _model(cls, K=4, **(SMALL if name == "coreset_attention" else {}))
    path = save_checkpoint(model, tmp_path / "c.ckpt")
    again = load(name, checkpoint=str(path))
    assert again.config == model.config and not again.training
    f, n, m, _, _ = make_sets([2, 9], dim=64, seed=21)
    assert torch.equal(again(f, n, m), model(f, n, m))


class _Payload:
    """A pickled object whose unpickling would run code (writes a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _official_ckpt(path, ref: OfficialCoresetReference, marker, drop=(), replace=None):
    state = {f"aggregate_model.{k}": v.clone() for k, v in ref.state_dict().items()}
    dim = ref.dim
    for unused in ("tau", "feature_norm_normalizer", "dist_from_ur_center_norm_size_balance"):
        state[f"aggregate_model.{unused}"] = torch.tensor(0.3)
    state["aggregate_model.ur_center"] = torch.randn(dim)
    state["aggregate_model.quality_measure.weight"] = torch.randn(1, dim)
    state["aggregate_model.quality_measure.bias"] = torch.randn(1)
    for mod in ("self_attn2", "multihead_attn2", "multihead_attn3"):
        state[f"aggregate_model.decoder_layer1.{mod}.in_proj_weight"] = torch.randn(3 * dim, dim)
        state[f"aggregate_model.decoder_layer1.{mod}.out_proj.weight"] = torch.randn(dim, dim)
    for mod in ("norm3", "norm4"):
        state[f"aggregate_model.decoder_layer1.{mod}.weight"] = torch.randn(dim)
    state["model.input_layer.0.weight"] = torch.randn(64, 3, 3, 3)
    state["template_model.module.input_layer.0.weight"] = torch.randn(64, 3, 3, 3)
    state["head.kernel"] = torch.randn(dim, 10)
    state["head.t"] = torch.tensor(1.0)
    for key in drop:
        del state[key]
    state.update(replace or {})
    ckpt = {"epoch": 1, "global_step": 2000, "pytorch-lightning_version": "1.8.6", "state_dict": state,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
            "hyper_parameters": {"arch": "ir_101", "coreset_size": ref.k, "evil": _Payload(str(marker))}}
    torch.save(ckpt, path)
    return path


@pytest.fixture
def official_ref():
    torch.manual_seed(3)
    return _perturb(OfficialCoresetReference(dim=512, heads=8, k=3), seed=3).eval()


def test_official_checkpoint_reproduces_the_official_forward_without_running_its_payload(
        tmp_path, make_sets, official_ref):
    marker = tmp_path / "payload_ran"
    path = _official_ckpt(tmp_path / "FaceCoresetNet.ckpt", official_ref, marker)
    model = load("coreset_attention", checkpoint=str(path))
    assert not marker.exists()
    assert model.config.dim == 512 and model.config.K == 3 and not model.training
    sizes = [1, 2, 3, 4, 80]
    _assert_matches_reference(model, official_ref, make_sets(sizes, dim=512, seed=22), sizes)
    fps = load("coreset_fps", checkpoint=str(path))
    assert fps.gamma.item() == official_ref.gamma.item() and not marker.exists()
    # the payload is real: an unsafe load runs it (so the assertions above can fail)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_official_checkpoint_with_missing_and_misshaped_keys_lists_them(tmp_path, official_ref):
    path = _official_ckpt(
        tmp_path / "bad.ckpt", official_ref, tmp_path / "m",
        drop=["aggregate_model.decoder_layer1.norm1.weight", "aggregate_model.pos_trans_norm.bias"],
        replace={"aggregate_model.decoder_layer1.self_attn1.out_proj.weight": torch.zeros(512, 256)})
    with pytest.raises(CheckpointError) as err:
        load("coreset_attention", checkpoint=str(path))
    msg = str(err.value)
    assert "bad.ckpt" in msg and "aggregate_model.decoder_layer1.norm1.weight" in msg
    assert "aggregate_model.pos_trans_norm.bias" in msg
    assert "self_attn1.out_proj.weight: checkpoint (512, 256) vs model (512, 512)" in msg


def test_foreign_files_get_clear_errors(tmp_path):
    lightning = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(2), "head.kernel": torch.ones(2)}}, lightning)
    with pytest.raises(CheckpointError, match=r"without FaceCoresetNet aggregator weights.*model\."):
        load("coreset_attention", checkpoint=str(lightning))
    other = save_checkpoint(load("mean"), tmp_path / "mean.ckpt")
    with pytest.raises(CheckpointError, match="holds aggregator 'mean'"):
        load("coreset_attention", checkpoint=str(other))
    model = _model(**SMALL)
    state = model.state_dict()
    del state["norm2.bias"]
    path = tmp_path / "partial.ckpt"
    torch.save({"format": "facecoreset.aggregator", "format_version": 1, "aggregator": "coreset_attention",
                "config": dataclasses.asdict(model.config), "state_dict": state}, path)
    with pytest.raises(CheckpointError, match="missing keys: norm2.bias"):
        load("coreset_attention", checkpoint=str(path))


def test_ragged_input_errors_name_the_rows():
    model = _model(CoresetFPSAggregator)
    f = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    n = torch.rand(6) + 1
    f[4, 2] = float("nan")
    with pytest.raises(InputError, match=r"flat rows \[4\]"):
        model.aggregate_ragged(RaggedSets(f, n, torch.tensor([0, 2, 6])))
    f[4, 2] = 0.0
    n[1] = -1.0
    with pytest.raises(InputError, match=r"norms must be >= 0.*\[1\]"):
        model.aggregate_ragged(RaggedSets(f, n, torch.tensor([0, 2, 6])))
    n[1] = 1.0
    with pytest.raises(InputError, match=r"empty sets at positions \[1\]"):
        model.aggregate_ragged(RaggedSets(f, n, torch.tensor([0, 2, 2, 6])))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_without_autocast(make_sets, dtype):
    model = _model(**SMALL)
    f, n, m, _, _ = make_sets([2, 11], dim=64, seed=23)
    got = model(f.to(dtype), n.to(dtype), m)
    want = model(f.to(dtype).float(), n.to(dtype).float(), m)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_official_checkpoint_core_size_comes_from_hyper_parameters(tmp_path):
    torch.manual_seed(4)
    ref = _perturb(OfficialCoresetReference(dim=512, heads=8, k=2), seed=4).eval()
    path = _official_ckpt(tmp_path / "k2.ckpt", ref, tmp_path / "m")
    assert load("coreset_attention", checkpoint=str(path)).config.K == 2
    assert load("coreset_attention", checkpoint=str(path), K=4).config.K == 4
    assert load("coreset_fps", checkpoint=str(path)).config.K == 2


def test_gamma_group_can_have_its_own_learning_rate():
    groups = _model(**SMALL).param_groups(1e-3, gamma_lr=1e-3)
    opt = torch.optim.AdamW(groups, lr=1e-4)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"gamma": 1e-3, "weights": 1e-4}


def test_chunked_eval_path_matches_the_reference(make_sets, monkeypatch):
    """Huge sets build their keys in chunks; force that path on a small set."""
    import aggregators.coreset as coreset_module

    monkeypatch.setattr(coreset_module, "KEY_CHUNK_ROWS", 1)  # chunks of 64 elements
    sizes = [300, 41, 2]
    model = _model(**SMALL)
    ref = OfficialCoresetReference.from_aggregator(model)
    f, n, m, _, _ = make_sets(sizes, dim=64, seed=24)
    with torch.no_grad():
        unit = model(f, n, m)
    for b, size in enumerate(sizes):
        torch.testing.assert_close(unit[b:b + 1], ref(f[b:b + 1, :size], n[b:b + 1, :size])[0], rtol=0, atol=2e-6)
