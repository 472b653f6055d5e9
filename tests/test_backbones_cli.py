"""``facecoreset extract``: end to end from an IJB-like folder; user errors exit 2 with one line."""

from __future__ import annotations

import numpy as np
import torch

from facecoreset_plugin.backbones.iresnet import ir_18
from facecoreset_plugin.cli import main

from test_extract import make_ijb  # tests/ is on sys.path (pytest prepend mode)


def test_extract_command_writes_the_runner_file(tmp_path, capsys):
    data = make_ijb(tmp_path / "data", n=4, protocol="ijbb")
    torch.save(ir_18().state_dict(), tmp_path / "ir18.pt")
    out = tmp_path / "f.npz"
    argv = ["extract", "--protocol", "ijbb", "--data-root", str(data), "--backbone", "ir_18",
            "--checkpoint", str(tmp_path / "ir18.pt"), "--output", str(out), "--flip", "--batch-size", "3",
            "--workers", "0", "--chunk-size", "2", "--no-progress"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with np.load(out) as f:
        assert f["img_feats"].shape == (4, 512) and f["norms"].shape == (4, 1)


def test_extract_command_user_errors(tmp_path, capsys):
    data = make_ijb(tmp_path / "data", n=2)
    base = ["extract", "--protocol", "ijbc", "--data-root", str(data), "--backbone", "ir_18",
            "--output", str(tmp_path / "f.npz"), "--workers", "0", "--no-progress"]
    assert main(base) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.ckpt not found" in err and len(err.splitlines()) == 1
    assert main(base + ["--checkpoint", str(tmp_path / "missing.ckpt"), "--protocol", "ijbc",
                        "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "ijbc_name_5pts_score.txt not found" in capsys.readouterr().err


def test_extract_command_device_and_worker_errors_are_one_line(tmp_path, capsys):
    data = make_ijb(tmp_path / "data", n=4)
    torch.save(ir_18().state_dict(), tmp_path / "ir18.pt")
    base = ["extract", "--protocol", "ijbc", "--data-root", str(data), "--backbone", "ir_18", "--checkpoint",
            str(tmp_path / "ir18.pt"), "--output", str(tmp_path / "f.npz"), "--no-progress", "--batch-size", "2"]
    assert main(base + ["--workers", "0", "--device", "cuda:abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device 'cuda:abc' is not a device" in err and len(err.splitlines()) == 1
    (data / "IJBC" / "loose_crop" / "3.png").unlink()
    assert main(base + ["--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.endswith(f"image {data / 'IJBC' / 'loose_crop' / '3.png'} listed in the 5pts file is missing")
