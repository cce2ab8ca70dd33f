from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from scratchllm.corpus.shards import (
    ShardDataset, ShardWriter, iter_documents, load_manifest, split_summary, token_dtype, verify, write_manifest,
)
from scratchllm.errors import ScratchError


def write(tmp_path, docs, shard_tokens=64, dtype=np.uint16):
    """docs: list of (domain, token list); writes one 'train' split + manifest."""
    domains = sorted({d for d, _ in docs})
    with ShardWriter(tmp_path, "train", np.dtype(dtype), shard_tokens, domains) as w:
        for domain, ids in docs:
            w.add(np.array(ids + [0]), domain)  # 0 plays <|eos|>
    vocab = max([70000 if dtype == np.uint32 else 300, *(max(ids, default=0) + 1 for _, ids in docs)])
    write_manifest(tmp_path, {"dtype": np.dtype(dtype).name, "vocab_size": vocab,
                              "eos_id": 0, "domains": domains, "splits": {"train": split_summary(w.shards)}})
    return w.shards


def test_token_dtype():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_round_trip_and_manifest(tmp_path, dtype):
    rng = np.random.default_rng(0)
    hi = 300 if dtype == np.uint16 else 70000
    docs = [("prose" if i % 3 else "code", rng.integers(1, hi, rng.integers(1, 90)).tolist()) for i in range(40)]
    shards = write(tmp_path, docs, dtype=dtype)
    assert len(shards) > 5 and all(s.tokens <= 64 or s.documents == 1 for s in shards)  # long docs get their own
    got = list(iter_documents(tmp_path))
    assert [(d, ids.tolist()) for d, ids in got] == docs
    root, m = load_manifest(tmp_path / "manifest.json")
    sp = m["splits"]["train"]
    assert sp["tokens"] == sum(len(ids) + 1 for _, ids in docs) and sp["documents"] == 40
    assert sp["domains"]["code"] == sum(len(ids) + 1 for d, ids in docs if d == "code")
    assert (root / sp["shards"][0]["file"]).stat().st_size == sp["shards"][0]["tokens"] * np.dtype(dtype).itemsize
    assert verify(tmp_path) == []
    data = bytearray((root / sp["shards"][1]["file"]).read_bytes())
    data[0] ^= 1
    (root / sp["shards"][1]["file"]).write_bytes(bytes(data))
    assert verify(tmp_path) == [f"train: {sp['shards'][1]['file']} checksum mismatch"]


def test_sampler_windows_are_real_and_deterministic(tmp_path):
    docs = [("prose", list(range(1 + 100 * k, 60 + 100 * k))) for k in range(10)]  # distinct, increasing ids
    write(tmp_path, docs, shard_tokens=150)
    ds = ShardDataset(tmp_path, seed=1)
    shards = [np.fromfile(tmp_path / f"train_{i:05d}.bin", dtype=np.uint16) for i in range(len(ds.shards))]
    x, y = ds.sample_batch(8, 16)
    assert x.dtype == torch.int64 and x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert x.is_contiguous() and y.is_contiguous()  # strided views slow the training step down
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        window = row_x + row_y[-1:]
        assert any(any(s[o : o + 17].tolist() == window for o in range(len(s) - 16)) for s in shards)
    again = ShardDataset(tmp_path, seed=1)
    assert torch.equal(again.sample_batch(8, 16)[0], x)
    assert not torch.equal(ShardDataset(tmp_path, seed=2).sample_batch(8, 16)[0], x)
    # an explicit generator leaves the dataset's own state alone
    g = torch.Generator().manual_seed(1)
    assert torch.equal(ShardDataset(tmp_path, seed=9).sample_batch(8, 16, generator=g)[0], x)


def test_sampler_state_resumes_exactly(tmp_path):
    write(tmp_path, [("prose", list(range(1, 250)))], shard_tokens=1000)
    ds = ShardDataset(tmp_path, seed=3)
    ds.sample_batch(4, 8)
    state = ds.state_dict()
    torch.save(state, tmp_path / "state.pt")
    expected = [ds.sample_batch(4, 8)[0] for _ in range(3)]
    resumed = ShardDataset(tmp_path, seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert resumed.batches == 1
    assert all(torch.equal(resumed.sample_batch(4, 8)[0], e) for e in expected)


def test_sequential_batches_cover_the_split(tmp_path):
    write(tmp_path, [("prose", list(range(1, 100)))], shard_tokens=1000)  # 100 tokens with eos
    batches = list(ShardDataset(tmp_path).iter_batches(2, 10))
    xs = torch.cat([x for x, _ in batches])
    assert xs.shape == (9, 10) and xs[0, 0] == 1 and xs[-1, -1] == 90


def test_errors(tmp_path):
    with pytest.raises(ScratchError, match="no prepared data"):
        ShardDataset(tmp_path)
    write(tmp_path, [("prose", [1, 2, 3])])
    with pytest.raises(ScratchError, match="no shard longer than"):
        ShardDataset(tmp_path).sample_batch(1, 16)
    with pytest.raises(ScratchError, match="no split 'val'"):
        ShardDataset(tmp_path, split="val")
    (tmp_path / "train_00000.bin").write_bytes(b"\x00")
    with pytest.raises(ScratchError, match="wrong size"):
        ShardDataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ScratchError, match="unsupported manifest"):
        load_manifest(tmp_path)


def test_disk_full_while_writing_a_shard(tmp_path, monkeypatch):
    real_fsync = __import__("os").fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 3:  # the second shard's .bin (after shard 1's .bin and .idx.npy)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr("os.fsync", fsync)
    with pytest.raises(ScratchError, match="disk full while writing .*train_00001.bin"):
        with ShardWriter(tmp_path, "train", np.dtype(np.uint16), 10, ["prose"]) as w:
            for _ in range(5):
                w.add(np.arange(8), "prose")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_00000.bin", "train_00000.idx.npy"]
