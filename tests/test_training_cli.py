"""``facecoreset train``: end to end on a bank file, resume, user errors, 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aggregators.training.bank import save_bank
from aggregators.training.cli import parse_options
from facecoreset_plugin import load, read_checkpoint
from facecoreset_plugin.cli import main
from facecoreset_plugin.errors import InputError

TINY = ["--option", "dim=16", "--option", "heads=2", "--steps", "6", "--batch-sets", "4", "--max-set", "5",
        "--eval-every", "3", "--checkpoint-every", "3", "--val-fraction", "0.25", "--val-far", "1e-2",
        "--no-progress", "--scale", "16"]


def _bank(path: Path, ids: int = 24, per: int = 5, d: int = 16) -> Path:
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(ids, d, generator=g), dim=-1)
    labels = torch.arange(ids).repeat_interleave(per)
    f = torch.nn.functional.normalize(centres[labels] + 0.3 * torch.randn(len(labels), d, generator=g), dim=-1)
    return save_bank(path, f, 5 + 30 * torch.rand(len(labels), generator=g), labels + 100)


def test_train_writes_best_and_last_that_load_and_resume(tmp_path, capsys):
    bank = _bank(tmp_path / "bank.npz")
    out = tmp_path / "run"
    argv = ["train", "coreset_attention", "--train-features", str(bank), "--output", str(out), *TINY]
    assert main(argv) == 0
    assert "best.ckpt = step" in capsys.readouterr().out
    for name in ("best.ckpt", "last.ckpt"):
        model = load("coreset_attention", checkpoint=str(out / name))
        assert model.config.dim == 16 and not model.training
    ex = read_checkpoint(out / "last.ckpt")["extra"]
    assert ex["step"] == 6 and ex["provenance"]["train_identities"] == 18
    hist = json.loads((out / "history.json").read_text())
    assert [row["step"] for row in hist["history"]] == [3.0, 6.0]
    # resuming a finished run to more steps continues from step 6
    assert main([*argv[:-len(TINY)], *TINY[:4], "--steps", "9", *TINY[6:]]) == 0
    assert read_checkpoint(out / "last.ckpt")["extra"]["step"] == 9


def test_export_makes_a_small_half_precision_checkpoint(tmp_path):
    bank = _bank(tmp_path / "bank.safetensors")
    slim = tmp_path / "slim.ckpt"
    assert main(["train", "coreset_attention", "--train-features", str(bank), "--output", str(tmp_path / "r"),
                 *TINY, "--export", str(slim)]) == 0
    assert next(iter(read_checkpoint(slim)["state_dict"].values())).dtype == torch.float16
    model = load("coreset_attention", checkpoint=str(slim))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("argv, message", [
    (["train", "mean"], "trainable"),
    (["train", "coreset_attention"], "exactly one of --train-features"),
    (["train", "coreset_attention", "--train-images", "X"], "needs --backbone"),
    (["train", "coreset_attention", "--train-features", "B", "--head", "adaface", "--steps", "0"], "steps"),
    (["train", "coreset_attention", "--train-features", "B", "--device", "cuda:abc"], "'cuda:abc' is not a device"),
    pytest.param(["train", "coreset_attention", "--train-features", "B", "--device", "cuda"],
                 "--device cuda: CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    bank = _bank(tmp_path / "b.npz")
    argv = [a if a != "B" else str(bank) for a in argv]
    if "--train-features" not in argv and "--train-images" not in argv and argv[1] == "mean":
        argv += ["--train-features", str(bank)]
    assert main([*argv, "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_parse_options_reads_json_values():
    assert parse_options(["K=5", "dropout=0.0", "name=abc"], "--option") == {"K": 5, "dropout": 0.0, "name": "abc"}
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_options(["oops"], "--option")


def test_torchrun_two_cpu_processes_agree(tmp_path):
    bank = _bank(tmp_path / "bank.npz")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "facecoreset_plugin.cli", "train", "coreset_attention", "--train-features", str(bank),
           "--output", str(out), *TINY, "--batch-sets", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and len(set(ranks["fingerprints"])) == 1
    ex = read_checkpoint(out / "last.ckpt")["extra"]
    assert ex["step"] == 6 and ex["provenance"]["world_size"] == 2
    load("coreset_attention", checkpoint=str(out / "best.ckpt"))


def test_train_from_an_image_folder_with_a_frozen_registered_backbone(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / "imgs" / f"id{i}").mkdir(parents=True)
        for j in range(1):
            Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"id{i}" / f"{j}.jpg")
    out = tmp_path / "run"
    assert main(["train", "coreset_attention", "--train-images", str(tmp_path / "imgs"), "--backbone", "ir_18",
                 "--output", str(out), "--steps", "1", "--batch-sets", "3", "--max-set", "3", "--val-fraction", "0",
                 "--eval-every", "1", "--no-progress"]) == 0
    from aggregators.training.bank import load_bank

    bank = load_bank(out / "train_bank.npz")
    assert bank.features.shape == (3, 2, 512) and bank.num_classes == 3
    assert read_checkpoint(out / "last.ckpt")["extra"]["step"] == 1
