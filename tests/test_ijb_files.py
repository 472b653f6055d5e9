"""IJB meta readers: values equal a plain-Python reader; malformed lines name file and line."""

from __future__ import annotations

import numpy as np
import pytest

from eval_protocols.ijb_files import (
    format_int_table,
    meta_paths,
    read_1n_csv,
    read_face_tid_mid,
    read_name_5pts_score,
    read_template_pairs,
    write_int_table,
)
from facecoreset_plugin.errors import InputError


def _write(path, text):
    path.write_text(text)
    return path


def test_pairs_match_plain_python(tmp_path):
    rng = np.random.default_rng(0)
    cols = [rng.integers(1, 10**6, 5000), rng.integers(0, 10**9, 5000), rng.integers(0, 2, 5000)]
    path = tmp_path / "p.txt"
    write_int_table(path, cols, chunk=777)
    expected = [tuple(int(v) for v in line.split()) for line in path.read_text().splitlines()]
    a, b, lab = read_template_pairs(path)
    assert list(zip(a.tolist(), b.tolist(), lab.tolist())) == expected
    assert [e[0] for e in expected] == cols[0].tolist()


def test_format_int_table_matches_python_formatting():
    rng = np.random.default_rng(1)
    cols = [rng.integers(0, 10**k, 300) for k in (1, 4, 12)]
    got = format_int_table(cols, [b".jpg ", b".", b"\n"], [1, 3, 1]).decode()
    want = "".join(f"{a}.jpg {b:03d}.{c}\n" for a, b, c in zip(*(c.tolist() for c in cols)))
    assert got == want
    assert format_int_table([np.array([0, 10, 99, 100])]) == b"0\n10\n99\n100\n"


def test_5pts_and_tid_mid(tmp_path):
    p = _write(tmp_path / "n.txt", "1.jpg " + " ".join(str(i + 0.5) for i in range(10)) + " 0.875\n"
               "22.jpg " + " ".join(str(-i) for i in range(10)) + " 1\n\n")
    names, lm, face = read_name_5pts_score(p)
    assert names == ["1.jpg", "22.jpg"]
    assert lm.shape == (2, 5, 2) and lm.dtype == np.float32
    assert lm[0, 2, 1] == pytest.approx(5.5) and lm[1, 4, 1] == -9
    assert face.tolist() == [0.875, 1.0]
    t = _write(tmp_path / "t.txt", "1.jpg 5 69544\r\n2.jpg 5 12\n")
    names, tid, mid = read_face_tid_mid(t)
    assert names == ["1.jpg", "2.jpg"] and tid.tolist() == [5, 5] and mid.tolist() == [69544, 12]


@pytest.mark.parametrize("body, line, what", [
    ("1 2 1\n3 4 0\n5 x 1\n", 3, "expected 3 integers"),
    ("1 2 1\n3 4 0 0\n5 6 1\n", 2, "found 4"),
    ("1 2 1\n3 4\n5 6 1 1\n", 2, "found 2"),
    ("1 2 1\n\n5 6 1\n", 2, "found 0"),
    ("1 2 1\n3 4 1.5\n", 2, "expected 3 integers"),
    ("1 2 1\n3 4 2\n", 2, "label must be 1"),
])
def test_malformed_pair_lines_name_file_and_line(tmp_path, body, line, what):
    p = _write(tmp_path / "ijbc_template_pair_label.txt", body)
    with pytest.raises(InputError) as err:
        read_template_pairs(p)
    assert f"{p}:{line}:" in str(err.value) and what in str(err.value)


def test_malformed_named_lines(tmp_path):
    p = _write(tmp_path / "t.txt", "1.jpg 1 2\n2.jpg 3 x\n")
    with pytest.raises(InputError, match=r"t\.txt:2: .*'2\.jpg 3 x'"):
        read_face_tid_mid(p)
    p = _write(tmp_path / "n.txt", "1.jpg 1 2 3\n")
    with pytest.raises(InputError, match=r"n\.txt:1: .*expected 12 .*found 4"):
        read_name_5pts_score(p)


def test_missing_file_says_where(tmp_path):
    with pytest.raises(InputError, match=r"template pair file not found: .*nope\.txt \(looked in"):
        read_template_pairs(tmp_path / "nope.txt")


def test_1n_csv(tmp_path):
    p = _write(tmp_path / "g.csv", "TEMPLATE_ID,SUBJECT_ID,FILENAME\n7,70,a.jpg\n3,30,b.jpg\n7,70,c.jpg\n")
    t, s = read_1n_csv(p)
    assert t.tolist() == [7, 3] and s.tolist() == [70, 30]
    bad = _write(tmp_path / "b.csv", "TEMPLATE_ID,SUBJECT_ID\n7,70\nx,1\n")
    with pytest.raises(InputError, match=r"b\.csv:3: malformed row"):
        read_1n_csv(bad)
    two = _write(tmp_path / "c.csv", "TEMPLATE_ID,SUBJECT_ID\n7,70\n7,71\n")
    with pytest.raises(InputError, match="template 7 listed under subjects 70 and 71"):
        read_1n_csv(two)


def test_meta_paths_layout(tmp_path):
    p = meta_paths(tmp_path, "ijbb")
    assert p.template_pair_label == tmp_path / "IJBB" / "meta" / "ijbb_template_pair_label.txt"
    assert list(p.galleries) == ["S1", "S2"]
    assert meta_paths(tmp_path, "ijbc").galleries["G2"].name == "ijbc_1N_gallery_G2.csv"
    with pytest.raises(InputError, match="valid: ijbb, ijbc"):
        meta_paths(tmp_path, "lfw")
