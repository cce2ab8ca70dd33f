from __future__ import annotations

import errno

import pytest

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write, atomic_write_text, read_text


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("new partial")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_disk_full_is_a_clear_error(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    atomic_write_text(p, "previous")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(ScratchError, match="disk full"):
        with atomic_write(p, "wb") as f:
            f.write(b"x" * 10)
    assert p.read_text() == "previous"
    assert len(list(tmp_path.iterdir())) == 1


def test_read_text_invalid_utf8(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok \xff\xfe bad")
    with pytest.raises(ScratchError, match=r"not valid UTF-8 \(bad byte 0xff at offset 3\)"):
        read_text(p)
    assert read_text(p, errors="replace") == "ok \ufffd\ufffd bad"
    with pytest.raises(ScratchError, match="file not found"):
        read_text(tmp_path / "missing.txt")
