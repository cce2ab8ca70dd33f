from __future__ import annotations

import gzip
import json
import tracemalloc

import pytest

from scratchllm.corpus import ingest
from scratchllm.corpus.ingest import IngestStats, html_to_text, read_files, resolve_paths, strip_markdown
from scratchllm.errors import ScratchError


def read(paths, **kw):
    stats = IngestStats()
    docs = list(read_files(paths, "prose", stats, **kw))
    return docs, stats


def test_formats_from_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\nsecond line\n")
    (tmp_path / "b.md").write_text("# Title\n\nSome **bold** and [a link](http://x.org).\n\n```py\nx = 1\n```\n")
    (tmp_path / "c.html").write_text(
        "<html><head><title>T</title><style>p{}</style></head><body><nav>menu</nav>"
        "<p>Hello&nbsp;<b>world</b> &amp; friends</p><script>var x;</script><ul><li>one</li><li>two</li></ul>"
        "</body></html>"
    )
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"text": "first record"}) + "\n\n" + json.dumps({"text": "second record", "id": 2}) + "\n"
    )
    (tmp_path / ".hidden.txt").write_text("skip me")
    docs, stats = read(resolve_paths([str(tmp_path)]))
    texts = {d.source.split("/")[-1]: d.text for d in docs}
    assert texts["a.txt"] == "plain text\nsecond line\n"
    assert "Title" in texts["b.md"] and "**" not in texts["b.md"] and "bold" in texts["b.md"]
    assert "a link" in texts["b.md"] and "http" not in texts["b.md"] and "x = 1" in texts["b.md"]
    html = texts["c.html"]
    assert "Hello world & friends" in html and "var x" not in html and "menu" not in html and "p{}" not in html
    assert "- one" in html and "- two" in html
    assert texts["d.jsonl#0"] == "first record" and texts["d.jsonl#1"] == "second record"
    assert all(d.domain == "prose" for d in docs)
    assert stats.files == 4 and stats.documents == 5 and stats.skipped == 0


def test_globs_and_missing_paths(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "1.txt").write_text("a")
    (tmp_path / "x" / "2.log").write_text("b")
    assert [p.name for p in resolve_paths([str(tmp_path / "**" / "*.txt")])] == ["1.txt"]
    with pytest.raises(ScratchError, match="input path not found"):
        resolve_paths([str(tmp_path / "nope")])
    with pytest.raises(ScratchError, match="matches no files"):
        resolve_paths([str(tmp_path / "*.md")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchError, match="contains no files"):
        resolve_paths([str(tmp_path / "empty")])


def test_bad_inputs_are_skipped_and_counted(tmp_path, monkeypatch):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n")
    (tmp_path / "nothing.jsonl").write_bytes(b"")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\x00\x00\x01")
    (tmp_path / "locked.txt").write_text("secret")
    (tmp_path / "bad.jsonl").write_bytes(
        b'{"text": "ok"}\n{not json}\n{"body": "no text field"}\n{"text": 3}\n{"text": "caf\xe9"}\n["a"]\n{"text": " "}\n'
    )
    (tmp_path / "broken.txt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    real_open = ingest._open

    def fake_open(path):
        if path.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return real_open(path)

    monkeypatch.setattr(ingest, "_open", fake_open)
    docs, stats = read(resolve_paths([str(tmp_path)]))
    assert sorted(d.text for d in docs) == ["fine", "ok"]
    assert stats.invalid_utf8 == 2  # the latin-1 file and one JSONL line
    assert stats.empty == 4  # empty.txt, blank.txt, the 0-byte nothing.jsonl, the blank JSONL record
    assert stats.binary == 1 and stats.unreadable == 1 and stats.corrupt == 1  # locked.txt; the corrupt .gz
    assert stats.bad_json == 4  # not JSON, missing field, number, not an object
    assert any("latin1.txt" in p and "0xe9" in p for p in stats.problems), stats.problems


def test_jsonl_nested_field_and_gzip(tmp_path):
    p = tmp_path / "data.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps({"meta": {"body": "nested text"}}) + "\n")
    docs, stats = read([p], text_field="meta.body")
    assert [d.text for d in docs] == ["nested text"] and stats.bad_json == 0


def test_large_file_streams_with_flat_memory(tmp_path, monkeypatch):
    """A file much larger than max_document_bytes becomes many documents; memory stays bounded."""
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 1 << 16)
    para = ("Ünïcode wörds span chunk boundaries. " * 20 + "\n") * 3 + "\n"
    p = tmp_path / "big.txt"
    with open(p, "w", encoding="utf-8") as f:
        for _ in range(8000):  # ~19 MB
            f.write(para)
    stats = IngestStats()
    tracemalloc.start()
    n = size = 0
    for doc in read_files([p], "prose", stats, max_document_bytes=100_000):
        n += 1
        size += len(doc.text)
        assert len(doc.text) < 110_000
        assert "\ufffd" not in doc.text
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert size == len(para) * 8000 and n > 150
    assert peak < 8_000_000, peak


def test_markup_helpers():
    assert strip_markdown("## Heading ##\n> quoted _it_ and `code`\n***\n![alt](img.png)") == (
        "Heading\nquoted it and code\n\nalt"
    )
    assert strip_markdown("snake_case_name stays") == "snake_case_name stays"
    assert html_to_text("<p>a</p><p>b</p><pre>  x = 1\n  y</pre>").split() == ["a", "b", "x", "=", "1", "y"]
