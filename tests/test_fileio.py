from __future__ import annotations

import os

import pytest

from shamisa.fileio import atomic_path, atomic_write, atomic_write_json, sha256_bytes, sha256_file


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with atomic_write(p, "w") as f:
        f.write("new")
    assert p.read_text() == "new"
    assert [x.name for x in tmp_path.iterdir()] == ["out.txt"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "out.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("partial")
            raise RuntimeError("crash")
    assert p.read_text().strip().startswith("{")
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]


def test_atomic_path_and_permissions(tmp_path):
    p = tmp_path / "sub" / "w.bin"
    with atomic_path(p) as tmp:
        tmp.write_bytes(b"abc")
    assert p.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert sha256_file(p) == sha256_bytes(b"abc")


def test_bad_mode_rejected(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "x", "a"):
            pass
