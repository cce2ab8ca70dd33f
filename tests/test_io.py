from __future__ import annotations

import errno
import hashlib
import os
import stat

import pytest

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write, atomic_write_text, read_text, sha256_file


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("new partial")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask):
    """mkstemp makes 0600 files; a model directory mounted into a container (or shared) must stay readable."""
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
        with atomic_write(tmp_path / "atomic.bin", "wb") as f:
            f.write(b"x")
        atomic_write_text(tmp_path / "atomic.txt", "replaced")  # replacing keeps the mode too
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert want == 0o666 & ~umask
    for name in ("atomic.txt", "atomic.bin"):
        assert oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) == oct(want), name


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


def test_read_jsonl_names_the_bad_line(tmp_path):
    from scratchllm.io import read_jsonl

    good = tmp_path / "good.jsonl"
    good.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert list(read_jsonl(good, "hint")) == [(f"{good}:1", {"a": 1}), (f"{good}:4", {"a": 2})]
    for content, message in [(b'{"a": 1}\n{"a": \n', r"bad.jsonl:2: malformed JSON"),
                             (b'{"a": 1}\n[1]\n', r"bad.jsonl:2: expected a JSON object, got list"),
                             (b'{"a": 1}\n{"a": "\xff"}\n', r"bad.jsonl:2: not valid UTF-8 \(bad byte 0xff\)")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(content)
        with pytest.raises(ScratchError, match=message) as e:
            list(read_jsonl(bad, "one object per line"))
        assert e.value.hint


def test_constitutional_prompts_with_invalid_utf8_get_a_clear_error(tmp_path):
    from scratchllm.align.constitutional import load_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"prompt": "hi"}\n{"prompt": "\xfe"}\n')
    with pytest.raises(ScratchError, match=r"prompts.jsonl:2: not valid UTF-8"):
        load_prompts(prompts)


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = os.urandom((1 << 20) + 12345)  # more than one 1 MiB read
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])
    assert sha256_file(str(path)) == hashlib.sha256(data[:-1]).hexdigest()
