"""Parquet, Arrow (datasets.save_to_disk), .jsonl.zst and .jsonl.gz give the same documents as JSONL."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from scratchllm.corpus.ingest import IngestStats, read_files, resolve_paths
from scratchllm.errors import ScratchError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstd = pytest.importorskip("zstandard")


def records(n: int = 300, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "alpha beta gamma délta ε 東京 the of and river stone".split()
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
        if i % 7 == 0:
            text += "\n\nsecond paragraph\twith a tab"
        out.append({"text": text, "url": f"https://example.org/{i}", "lang": "en" if i % 3 else "fr",
                    "score": round(rng.random() * 5, 3)})
    return out


def read(paths, **kw):
    stats = IngestStats()
    return [d.text for d in read_files(paths, "prose", stats, **kw)], stats


def write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


def test_every_format_gives_the_same_documents_as_jsonl(tmp_path):
    recs = records()
    write_jsonl(tmp_path / "ref.jsonl", recs)
    expected, _ = read([tmp_path / "ref.jsonl"])
    assert len(expected) == len(recs)

    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet", row_group_size=64)  # several row groups
    raw = (tmp_path / "ref.jsonl").read_bytes()
    # two zstd frames back to back, as some tools write them
    c = zstd.ZstdCompressor()
    half = raw.index(b"\n", len(raw) // 2) + 1
    (tmp_path / "d.jsonl.zst").write_bytes(c.compress(raw[:half]) + c.compress(raw[half:]))
    with gzip.open(tmp_path / "d.jsonl.gz", "wb") as f:
        f.write(raw)
    for name in ("d.parquet", "d.jsonl.zst", "d.jsonl.gz"):
        got, stats = read([tmp_path / name])
        assert got == expected, name
        assert stats.skipped == 0


def test_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    recs = records(200, seed=1)
    write_jsonl(tmp_path / "ref.jsonl", recs)
    expected, _ = read([tmp_path / "ref.jsonl"])
    ds = datasets.Dataset.from_list(recs)
    ds.save_to_disk(str(tmp_path / "ds"), max_shard_size=4000)  # several Arrow files
    files = resolve_paths([str(tmp_path / "ds")])
    assert len(files) > 1 and all(p.suffix == ".arrow" for p in files)
    got, stats = read(files)
    assert got == expected and stats.skipped == 0
    # a DatasetDict folder: each split's Arrow files, split folders in name order
    datasets.DatasetDict({"train": ds, "test": datasets.Dataset.from_list(recs[:5])}).save_to_disk(str(tmp_path / "dd"))
    got, _ = read(resolve_paths([str(tmp_path / "dd")]))
    assert got == expected[:5] + expected


def test_where_conditions_on_other_columns(tmp_path):
    recs = records(120, seed=2)
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet", row_group_size=50)
    write_jsonl(tmp_path / "d.jsonl", recs)
    want = [r["text"] for r in recs if r["lang"] == "en" and r["score"] >= 2.5]
    for name in ("d.parquet", "d.jsonl"):
        got, stats = read([tmp_path / name], where=["lang == 'en'", "score >= 2.5"])
        assert got == want, name
        assert stats.metadata_removed == len(recs) - len(want)
    got, _ = read([tmp_path / "d.parquet"], where=['lang in ["fr"]'])
    assert got == [r["text"] for r in recs if r["lang"] == "fr"]
    with pytest.raises(ScratchError, match="cannot read condition"):
        read([tmp_path / "d.parquet"], where=["score >>> 3"])


def test_parquet_text_column_and_bad_inputs(tmp_path):
    recs = records(100, seed=3)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist([{"body": r["text"], "n": 1} for r in recs]), good, row_group_size=30)
    got, _ = read([good], text_field="body")
    assert got == [r["text"] for r in recs]

    pq.write_table(pa.Table.from_pylist([{"content": "x"}]), tmp_path / "nocol.parquet")
    pq.write_table(pa.Table.from_pylist([{"body": 3}]), tmp_path / "notstr.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    data = good.read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(data[: len(data) // 2])
    raw = "".join(json.dumps({"body": r["text"]}) + "\n" for r in recs).encode()
    z = zstd.ZstdCompressor().compress(raw)
    (tmp_path / "truncated.jsonl.zst").write_bytes(z[: len(z) // 2])
    (tmp_path / "garbage.jsonl.zst").write_bytes(b"not zstd at all" * 10)
    (tmp_path / "mixed.jsonl").write_bytes(
        json.dumps({"body": "utf-8 café"}, ensure_ascii=False).encode() + b"\n" + '{"body": "latin-1 caf\xe9"}\n'.encode("latin-1")
    )
    g = gzip.compress(raw)
    (tmp_path / "truncated.jsonl.gz").write_bytes(g[: len(g) // 2])
    paths = sorted(tmp_path.glob("*"))
    got, stats = read(paths, text_field="body")
    # every good document survives; the truncated compressed files keep what precedes the damage
    assert got.count(recs[0]["text"]) >= 2 and "utf-8 café" in got
    assert [t for t in got if t != "utf-8 café"][:100] == [r["text"] for r in recs]
    assert stats.bad_schema == 2  # no column, not a string
    assert stats.corrupt == 5  # garbage/truncated parquet, garbage/truncated zstd, truncated gzip
    assert stats.invalid_utf8 == 1  # the latin-1 line of the mixed file
    assert any("no column 'body'" in p for p in stats.problems), stats.problems
    many = records(4000, seed=5)  # several zstd blocks: the ones before the cut decode
    z = zstd.ZstdCompressor().compress("".join(json.dumps({"body": r["text"]}) + "\n" for r in many).encode())
    (tmp_path / "truncated.jsonl.zst").write_bytes(z[: len(z) // 2])
    got, stats = read([tmp_path / "truncated.jsonl.zst"], text_field="body")
    assert 0 < len(got) < len(many) and got == [r["text"] for r in many][: len(got)]
    assert stats.corrupt == 1 and "truncated zstd stream" in stats.problems[0]


def test_parquet_streams_row_group_by_row_group(tmp_path, monkeypatch):
    """Only one row group is read at a time: the reader never asks pyarrow for the whole file."""
    recs = records(400, seed=4)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(recs), path, row_group_size=40)
    calls = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, *a, **kw):
        calls.append(i)
        return real(self, i, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **kw: pytest.fail("whole-file read"))
    it = read_files([path], "prose", IngestStats())
    next(it)
    assert calls == [0]
    assert sum(1 for _ in it) == 399 and calls == list(range(10))


def test_hub_source_streams_through_datasets(tmp_path, monkeypatch):
    """kind = "hub" with a local builder ("parquet" + data_files): the streaming path, no network."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from scratchllm.corpus.ingest import read_hub

    recs = records(50, seed=6)
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet", row_group_size=20)
    stats = IngestStats()
    docs = list(read_hub("parquet", "prose", stats, data_files=[str(tmp_path / "d.parquet")],
                         where=["lang == 'en'"], max_documents=10))
    want = [r["text"] for r in recs if r["lang"] == "en"][:10]
    assert [d.text for d in docs] == want and stats.documents == 10
    with pytest.raises(ScratchError, match="cannot open dataset"):
        list(read_hub("parquet", "prose", IngestStats(), data_files=[str(tmp_path / "missing.parquet")]))
