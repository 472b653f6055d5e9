"""The training loop: AdamW + margin head on aggregated descriptors, checkpoints, resume, DDP.

``train`` is the whole loop. Every step is a pure function of (weights, optimizer state,
seed, step, rank): the batch comes from :class:`SetSampler` and the global RNG (dropout,
Gumbel noise) is reseeded per step, so a run resumed from ``last.ckpt`` continues exactly
as an uninterrupted one, on one process or under ``torchrun`` (DDP: gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

__all__ = ["TrainConfig", "TrainResult", "train", "export_checkpoint", "DistInfo", "dist_info"]

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecoreset_plugin.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from facecoreset_plugin.devices import resolve_device
from facecoreset_plugin.errors import CheckpointError, InputError
from facecoreset_plugin.safe_io import atomic_write

from .bank import FeatureBank
from .heads import HeadConfig, MarginHead
from .sampler import SamplerConfig, SetSampler, _seeded

Validator = Callable[[nn.Module, torch.device], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    """Training options (defaults follow the FaceCoresetNet paper where it states them)."""

    steps: int = 2000  # optimizer steps in total (a resumed run continues up to this)
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 1e-3  # AdamW weight decay (groups the aggregator exempts get none)
    head_lr: float | None = None  # learning rate of the class kernel (None: same as lr)
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    seed: int = 0  # seeds batches, dropout/Gumbel noise and the head initialisation
    eval_every: int = 200  # validate (and maybe write best.ckpt) every this many steps
    checkpoint_every: int = 100  # write last.ckpt every this many steps
    max_minutes: float | None = None  # stop cleanly after this much wall time (None: no limit)
    init_kernel: str = "class_means"  # class kernel init: "class_means" of the bank or "random"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # training set sampling
    head: HeadConfig = field(default_factory=HeadConfig)  # margin loss

    def validate(self) -> "TrainConfig":
        if self.steps < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise InputError(f"steps, eval_every and checkpoint_every must be >= 1; got {self.steps}, "
                             f"{self.eval_every}, {self.checkpoint_every}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise InputError(f"need lr > 0, weight_decay >= 0, grad_clip >= 0; got {self.lr}, "
                             f"{self.weight_decay}, {self.grad_clip}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise InputError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.init_kernel not in ("class_means", "random"):
            raise InputError(f"init_kernel must be 'class_means' or 'random', got {self.init_kernel!r}")
        self.sampler.validate(), self.head.validate()
        return self


@dataclass
class TrainResult:
    """What a run did."""

    step: int  # last completed step
    best_step: int  # step of best.ckpt
    best_metric: float  # its validation value (nan without a validator)
    metric: str  # the metric's name
    stopped_early: bool  # True when --max-minutes ended the run
    history: list[dict[str, float]]  # every validation: step, metrics, train loss
    output: Path  # the folder holding best.ckpt and last.ckpt


@dataclass(frozen=True)
class DistInfo:
    """This process' place in a torchrun job."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this node (picks the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read torchrun's environment (a single process when it is absent)."""
    env = os.environ
    return DistInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def _init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Join the process group when running under torchrun; return whether this call created it."""
    if info.world_size <= 1 or torch.distributed.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return True


class _Objective(nn.Module):
    """Aggregator + margin head -> mean cross-entropy (one module, so DDP syncs both)."""

    def __init__(self, model: nn.Module, head: MarginHead) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, features: Tensor, norms: Tensor, mask: Tensor, targets: Tensor) -> Tensor:
        unit, norm = self.model.embed(features, norms, mask)
        return F.cross_entropy(self.head(unit, norm, targets).float(), targets)


def _param_groups(model: nn.Module, head: MarginHead, cfg: TrainConfig) -> list[dict[str, Any]]:
    if hasattr(model, "param_groups"):
        groups = [dict(g) for g in model.param_groups(cfg.weight_decay)]
    else:  # matrices decay; biases, norms and scalars do not
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if list(g["params"])]
    if not groups:
        raise InputError(f"{type(model).__name__} has no trainable parameters; only trainable aggregators can be trained")
    groups.append({"params": [head.kernel], "weight_decay": cfg.weight_decay, "lr": cfg.head_lr or cfg.lr})
    return groups


@torch.no_grad()
def _class_means(bank: FeatureBank) -> Tensor:
    """Unit mean of n*f over each identity's images and views: [D,C]."""
    raw = (bank.features * bank.norms.unsqueeze(-1)).sum(1)
    sums = torch.zeros(bank.num_classes, bank.dim).index_add_(0, bank.classes, raw)
    return F.normalize(sums, dim=-1).T.contiguous()


def _fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(model: nn.Module, bank: FeatureBank, output: str | Path, config: TrainConfig = TrainConfig(),
          validator: Validator | None = None, device: str | torch.device = "cpu", resume: bool = True,
          progress: bool = True, extra: dict[str, Any] | None = None) -> TrainResult:
    """Train ``model`` (a trainable ``Aggregator``) on ``bank``; write best/last checkpoints.

    Args:
        model: the aggregator (its weights are updated in place).
        bank: the training bank.
        output: folder for ``best.ckpt``, ``last.ckpt``, ``history.json``.
        config: training options.
        validator: held-out metric for model selection (``best.ckpt`` = its maximum); without
            one, ``best.ckpt`` is the last step.
        device: where to train (checked by :func:`facecoreset_plugin.devices.resolve_device`); under
            torchrun a bare ``cuda`` means ``cuda:LOCAL_RANK``.
        resume: continue from ``output/last.ckpt`` when it exists.
        progress: show a progress bar (rank 0 only).
        extra: plain data stored in every checkpoint (provenance: bank path, command ...).

    Raises:
        InputError: bad options, a device this machine lacks, or a bank whose width does not fit the model.
        CheckpointError: ``last.ckpt`` of another model or run setup.
    """
    cfg = config.validate()
    info = dist_info()
    device = resolve_device(device, info.local_rank if info.world_size > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object) use the current device
    created = _init_distributed(info, device)
    try:
        return _train(model, bank, Path(output), cfg, validator, device, resume, progress, extra or {}, info)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _train(model: nn.Module, bank: FeatureBank, output: Path, cfg: TrainConfig, validator: Validator | None,
           device: torch.device, resume: bool, progress: bool, extra: dict[str, Any], info: DistInfo) -> TrainResult:
    from tqdm.auto import tqdm

    start_time = time.monotonic()
    distributed = info.world_size > 1
    torch.manual_seed(cfg.seed)
    head = MarginHead(bank.dim, bank.num_classes, cfg.head)
    if cfg.init_kernel == "class_means":
        head.kernel.data.copy_(_class_means(bank))
    sampler = SetSampler(bank, cfg.sampler, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    objective = _Objective(model, head).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, head, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    metric = getattr(validator, "metric", "train_loss") if validator is not None else "none"
    state = {"step": 0, "best_step": 0, "best_metric": -math.inf, "history": []}
    run_key = {"num_classes": bank.num_classes, "dim": bank.dim, "seed": cfg.seed,
               "sampler": dataclasses.asdict(cfg.sampler), "head": dataclasses.asdict(cfg.head)}
    last = output / "last.ckpt"
    if resume and last.exists():
        state = _restore(last, objective, optimizer, run_key)
    net: nn.Module = objective
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    validate_args = getattr(model, "validate_args", None)
    if validate_args is not None:
        model.validate_args = False  # the sampler builds valid batches; skip per-step checks
    objective.train()

    def save(path: Path, step: int) -> None:
        payload = {**extra, "step": step, "best_step": state["best_step"], "best_metric": state["best_metric"],
                   "metric": metric, "history": state["history"], "run": run_key, "train_config": dataclasses.asdict(cfg),
                   "optimizer": optimizer.state_dict(), "head": head.state_dict()}
        save_checkpoint(model, path, payload)

    def evaluate(step: int, loss: float) -> None:
        row = {"step": float(step), "train_loss": loss}
        if validator is not None:
            row.update(validator(model, device))
            objective.train()
        value = row.get(metric, -loss if validator is None else math.nan)
        state["history"].append(row)
        if validator is None or value > state["best_metric"]:
            state["best_metric"], state["best_step"] = float(value), step
            save(output / "best.ckpt", step)
        with atomic_write(output / "history.json", "w") as fh:
            json.dump({"metric": metric, "best_step": state["best_step"], "best_metric": state["best_metric"],
                       "history": state["history"]}, fh, indent=1)

    step = state["step"]
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and info.is_main), unit="step",
               dynamic_ncols=True, desc="train")
    running, seen, stopped = math.nan, 0, False
    tick = time.monotonic()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    while step < cfg.steps:
        if _should_stop(cfg, start_time, device, distributed):
            stopped = True
            break
        batch = sampler.batch(step).to(device)
        torch.manual_seed(_seeded(cfg.seed, step, info.rank, 31).initial_seed())
        loss = net(batch.features, batch.norms, batch.mask, batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise InputError(f"training diverged at step {step} (loss {value}); lower --lr or check the bank")
        running = value if math.isnan(running) else 0.95 * running + 0.05 * value
        seen += len(batch.targets) * info.world_size
        now = time.monotonic()
        if now - tick > 1.0 or step == cfg.steps:
            bar.set_postfix(loss=f"{running:.3f}", sets_per_s=f"{seen / (now - tick):.0f}")
            tick, seen = now, 0
        bar.update(1)
        state["step"] = step
        if step % cfg.eval_every == 0 or step == cfg.steps:
            if info.is_main:
                evaluate(step, running)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if info.is_main:
                save(last, step)
    bar.close()
    if stopped and info.is_main and step > 0:
        if not state["history"] or state["history"][-1]["step"] != step:
            evaluate(step, running)
        save(last, step)
    if validate_args is not None:
        model.validate_args = validate_args
    _check_ranks_agree(objective, output, info)
    if distributed:
        torch.distributed.barrier()
    model.eval()
    return TrainResult(step, state["best_step"], state["best_metric"], metric, stopped, state["history"], output)


def _should_stop(cfg: TrainConfig, start: float, device: torch.device, distributed: bool) -> bool:
    if cfg.max_minutes is None:
        return False
    stop = torch.tensor(float(time.monotonic() - start > cfg.max_minutes * 60), device=device)
    if distributed:  # every rank stops at the same step (rank clocks differ slightly)
        torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
    return bool(stop)


def _restore(path: Path, objective: _Objective, optimizer: torch.optim.Optimizer, run_key: dict) -> dict:
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a facecoreset training checkpoint; remove it or pick another --output")
    name = getattr(objective.model, "name", "")
    if obj.get("aggregator") != name:
        raise CheckpointError(f"{path}: holds aggregator {obj.get('aggregator')!r}, not {name!r}; "
                              "pick another --output or pass --no-resume")
    ex = obj.get("extra") or {}
    if ex.get("run") != run_key:
        diff = sorted(k for k in run_key if (ex.get("run") or {}).get(k) != run_key[k])
        raise CheckpointError(f"{path}: was written by a run with different {diff}; resume needs the same bank, "
                              "seed, sampler and head (or pass --no-resume / another --output)")
    from facecoreset_plugin.checkpoint import check_state_dict

    check_state_dict(objective.model, obj["state_dict"], str(path))
    objective.model.load_state_dict(obj["state_dict"])
    objective.head.load_state_dict(ex["head"])
    optimizer.load_state_dict(ex["optimizer"])
    return {"step": int(ex["step"]), "best_step": int(ex["best_step"]), "best_metric": float(ex["best_metric"]),
            "history": list(ex.get("history") or [])}


def _check_ranks_agree(objective: _Objective, output: Path, info: DistInfo) -> None:
    """Under DDP, compare every rank's weights; write ``ranks.json`` and fail on disagreement."""
    if info.world_size <= 1:
        return
    mine = _fingerprint(objective)
    prints: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(prints, mine)
    if info.is_main:
        with atomic_write(output / "ranks.json", "w") as fh:
            json.dump({"world_size": info.world_size, "fingerprints": prints}, fh, indent=1)
    if len(set(prints)) != 1:
        raise RuntimeError(f"DDP ranks disagree after training: {prints}")


def export_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16,
                      keep: tuple[str, ...] = ("step", "metric", "best_metric", "history", "train_config",
                                               "provenance")) -> Path:
    """Write a slim copy of a training checkpoint (weights in ``dtype``, no optimizer/head).

    Floating weights are stored in ``dtype``; ``load(name, checkpoint=dst)`` casts them back
    into the model's float32 parameters.
    """
    from facecoreset_plugin.checkpoint import FORMAT_VERSION

    obj = read_checkpoint(src)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{src}: not a facecoreset checkpoint")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    ex = obj.get("extra") or {}
    payload = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION, "aggregator": obj["aggregator"],
               "config": obj.get("config") or {}, "state_dict": state,
               "extra": {k: ex[k] for k in keep if k in ex}}
    with atomic_write(dst) as fh:
        torch.save(payload, fh)
    return Path(dst)
