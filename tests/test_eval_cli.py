"""`facecoreset eval` end to end through facecoreset_plugin.cli.main; user errors exit 2 with one line."""

from __future__ import annotations

import json

import pytest

from eval_protocols.cli import parse_checkpoints
from eval_protocols.synthetic import SyntheticConfig, generate_protocol
from facecoreset_plugin.cli import main
from facecoreset_plugin.errors import InputError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return root, generate_protocol(root, SyntheticConfig.preset("tiny"), progress=False)


def test_synthetic_default_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["eval", "--preset", "tiny", "--output", str(out), "--no-progress", "--no-plots"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["protocol"] == "synthetic"
    assert {"mean", "quality_weighted", "media_fusion"} <= set(doc["aggregators"])
    from eval_protocols.cli import shipped_checkpoint

    if shipped_checkpoint("coreset_attention") is not None:  # shipped weights join the synthetic comparison
        assert doc["checkpoints"]["coreset_attention"].endswith("coreset_attention_synthetic.ckpt")
    stdout = capsys.readouterr().out
    assert "quality_weighted" in stdout and "results.json" in stdout
    assert (out / "scores.npz").is_file()
    assert not (out / "roc.png").exists() and not (out / "dir.png").exists()  # --no-plots


def test_ijbc_with_features(tree, tmp_path):
    root, feats = tree
    out = tmp_path / "o"
    rc = main(["eval", "--protocol", "ijbc", "--data-root", str(root), "--features", str(feats), "--aggregators",
               "mean,quality_weighted", "--output", str(out), "--far-rule", "strict", "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["aggregators"]) == ["mean", "quality_weighted"] and doc["far_rule"] == "strict"
    rc = main(["eval", "--protocol", "ijbc", "--data-root", str(root), "--features", str(feats), "--output",
               str(tmp_path / "all"), "--no-progress", "--no-plots"])
    assert rc == 0
    assert not (tmp_path / "all" / "roc.png").exists() and not (tmp_path / "all" / "dir.png").exists()
    names = set(json.loads((tmp_path / "all" / "results.json").read_text())["aggregators"])
    assert {"mean", "quality_weighted", "media_fusion"} <= names and "coreset_attention" not in names
    assert set(doc["aggregators"]["mean"]["identification"]) == {"G1", "G2", "mean"}
    assert (out / "roc.png").is_file() and (out / "dir.png").is_file() and (out / "scores.npz").is_file()


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("facecoreset eval: error: ")
    return err[0]


def test_user_errors_exit_2_with_one_line(tree, tmp_path, capsys):
    root, feats = tree
    base = ["eval", "--protocol", "ijbc", "--data-root", str(root), "--output", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--features", str(feats), "--aggregators", "mean,nope"]) == 2
    assert "unknown aggregator(s) 'nope'; available:" in _error_line(capsys)
    assert main(base + ["--features", str(tmp_path / "missing.npz"), "--aggregators", "mean"]) == 2
    assert "missing.npz (looked in" in _error_line(capsys)
    assert main(base + ["--aggregators", "mean"]) == 2
    assert "needs --features FILE, or --backbone" in _error_line(capsys)
    assert main(["eval", "--protocol", "ijbc", "--aggregators", "mean", "--no-progress"]) == 2
    assert "needs --data-root" in _error_line(capsys)
    assert main(base + ["--features", str(feats), "--aggregators", "mean", "--checkpoint", "x.ckpt"]) == 2
    assert "needs --backbone" in _error_line(capsys)
    assert main(base + ["--features", str(feats), "--aggregators", "mean", "--checkpoint", "mean=none.ckpt"]) == 2
    assert "file not found" in _error_line(capsys)
    # weights trained on the synthetic world are never applied to IJB data silently
    assert main(base + ["--features", str(feats), "--aggregators", "coreset_attention"]) == 2
    assert "needs weights: pass --checkpoint coreset_attention=PATH" in _error_line(capsys)
    assert not (tmp_path / "o" / "results.json").exists()


def test_malformed_pair_line_names_file_and_line(tree, tmp_path, capsys):
    import shutil

    root, feats = tree
    shutil.copytree(root / "IJBC", tmp_path / "IJBC")
    pairs = tmp_path / "IJBC/meta/ijbc_template_pair_label.txt"
    lines = pairs.read_text().splitlines()
    lines[41] = lines[41] + " 7"
    pairs.write_text("\n".join(lines) + "\n")
    rc = main(["eval", "--protocol", "ijbc", "--data-root", str(tmp_path), "--features", str(feats),
               "--aggregators", "mean", "--output", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert f"{pairs}:42: malformed line" in _error_line(capsys)


def test_cuda_unavailable_is_a_user_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["eval", "--preset", "tiny", "--device", "cuda", "--no-progress"]) == 2
    assert "CUDA is not available" in _error_line(capsys)


def test_malformed_device_is_a_user_error(capsys):
    assert main(["eval", "--preset", "tiny", "--device", "cuda:abc", "--no-progress"]) == 2
    assert "--device 'cuda:abc' is not a device" in _error_line(capsys)


def test_parse_checkpoints(tmp_path):
    assert parse_checkpoints(["a=x.ckpt,b=y.ckpt", "bb.pt"]) == ({"a": "x.ckpt", "b": "y.ckpt"}, "bb.pt")
    weird = tmp_path / "w=1.pt"
    weird.write_bytes(b"")
    assert parse_checkpoints([str(weird)]) == ({}, str(weird))
    with pytest.raises(InputError, match="two entries without NAME="):
        parse_checkpoints(["a.pt", "b.pt"])


def test_backbone_extraction_then_eval(tmp_path, capsys):
    """--backbone without --features: features are extracted from the loose crops first (real ir_18)."""
    import numpy as np
    from PIL import Image

    meta, crops = tmp_path / "IJBC/meta", tmp_path / "IJBC/loose_crop"
    meta.mkdir(parents=True)
    crops.mkdir()
    rng = np.random.default_rng(0)
    pts = "38.29 51.70 73.53 51.50 56.03 71.74 41.55 92.37 70.73 92.20"
    names, tid_mid = [], []
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(crops / f"{i + 1}.jpg")
        names.append(f"{i + 1}.jpg {pts} 0.9")
        tid_mid.append(f"{i + 1}.jpg {10 + i // 2} {100 + i}")
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(names) + "\n")
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (meta / "ijbc_template_pair_label.txt").write_text("10 11 1\n10 12 0\n10 13 0\n11 12 0\n11 13 1\n12 13 0\n")
    out = tmp_path / "out"
    base = ["eval", "--protocol", "ijbc", "--data-root", str(tmp_path), "--backbone", "ir_18",
            "--aggregators", "mean", "--output", str(out), "--no-progress", "--no-plots", "--batch-size", "4"]
    # random backbone weights are refused, as by `facecoreset extract`
    assert main(base) == 2
    assert "--backbone ir_18 has no weights: pass --checkpoint PATH" in _error_line(capsys)
    assert not out.exists()
    import torch

    from facecoreset_plugin.backbones.iresnet import ir_18

    torch.manual_seed(0)
    torch.save(ir_18().state_dict(), tmp_path / "ir18.pt")
    rc = main(base + ["--checkpoint", str(tmp_path / "ir18.pt")])
    assert rc == 0, capsys.readouterr().err
    assert (out / "features_ir_18.npz").is_file()
    doc = json.loads((out / "results.json").read_text())
    assert doc["aggregators"]["mean"]["verification"]["num_genuine"] == 2
    assert "identification" not in doc["aggregators"]["mean"]  # no 1:N CSVs in this tree
