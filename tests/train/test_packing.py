"""Best-fit document packing and document masking."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

from scratchllm.corpus.shards import ShardDataset, iter_documents
from scratchllm.model.model import IGNORE_INDEX, ModelConfig, Transformer
from scratchllm.train.packing import DocumentPacker, PackedBatchSource, packed_batch
from scratchllm.train.parallel import Dist
from scratchllm.train.pretrain import build_trainer

from .conftest import EOS, TINY_MODEL


def test_an_epoch_holds_every_token_once_and_rows_start_with_bos(shard_dir):
    packer = DocumentPacker(ShardDataset(shard_dir, "train"), seq_len=32, seed=3, buffer_size=64)
    rows = packer.plan(0)
    seen: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)  # doc -> (offset, tokens) of its pieces
    for pieces in rows:
        tokens, ids = packer.row(pieces)
        assert tokens[0] == packer.bos == EOS  # no BOS in the byte tokenizer: <|eos|> is the separator
        assert len(tokens) == 33
        for j, (doc, _, start, _) in enumerate(pieces):
            part = tokens[ids == j]
            assert part[0] == packer.bos
            seen[doc].append((start, part[1:].tolist()))
        assert (ids == -1).sum() == 33 - sum(p[3] + 1 for p in pieces)  # the rest is padding
    docs = [np.append(d, EOS).tolist() for _, d in iter_documents(shard_dir, "train")]
    assert sorted(seen) == list(range(len(docs)))
    # the pieces of each document, in document order, are exactly it: nothing lost or repeated
    assert all(sum((t for _, t in sorted(seen[i])), []) == docs[i] for i in range(len(docs)))
    assert any(len(d) > 32 for d in docs)  # long documents were split across rows
    stats = packer.stats(0)
    assert stats["rows"] == len(rows) and 0 <= stats["padding_share"] < 0.05
    assert packer.plan(1) != rows  # a new order each epoch
    # rows follow the stream: the epoch does not begin with a run of row-long pieces of split documents
    # (pure best fit would take them first): multi-document rows are about as common early as overall
    overall = sum(len(r) >= 2 for r in rows) / len(rows)
    assert sum(len(r) >= 2 for r in rows[:200]) / 200 > overall / 2


def test_batches_mix_documents(shard_dir):
    """Rows are shuffled after packing: the pieces of one long document do not fill whole batches."""
    packer = DocumentPacker(ShardDataset(shard_dir, "train"), seq_len=32, seed=3, buffer_size=64)
    rows = packer.plan(0)
    docs_per_batch = [len({p[0] for r in rows[i:i + 8] for p in r}) for i in range(0, len(rows) - 8, 8)]
    longest = max(d[2] for d in packer.docs)
    assert longest > 8 * 32  # some document alone could fill a batch of 8 rows
    assert min(docs_per_batch) >= 3 and np.median(docs_per_batch) >= 6, docs_per_batch


def test_targets_stop_at_piece_boundaries(shard_dir):
    packer = DocumentPacker(ShardDataset(shard_dir, "train"), seq_len=32, seed=0)
    rows = [r for r in packer.plan(0) if len(r) >= 2][:8]
    x, y, ids = packed_batch(packer, rows, doc_mask=True)
    assert x.shape == y.shape == ids.shape == (8, 32)
    built = [packer.row(r) for r in rows]
    tokens = torch.from_numpy(np.stack([t for t, _ in built]))
    full_ids = torch.from_numpy(np.stack([i for _, i in built]))
    cross = (full_ids[:, 1:] != full_ids[:, :-1]) | (full_ids[:, 1:] < 0)
    assert cross.any() and torch.equal(x, tokens[:, :-1]) and torch.equal(ids, full_ids[:, :-1])
    assert (y[cross] == IGNORE_INDEX).all()
    assert torch.equal(y[~cross], tokens[:, 1:][~cross])


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_doc_masked_packed_row_equals_each_document_alone(shard_dir, pos_emb):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**TINY_MODEL, "pos_emb": pos_emb})).eval()
    packer = DocumentPacker(ShardDataset(shard_dir, "train"), seq_len=48, seed=1, buffer_size=200)
    rows = [r for r in packer.plan(0) if len(r) >= 3][:2]
    x, _, ids = packed_batch(packer, rows, doc_mask=True)
    with torch.no_grad():
        packed = model(x, doc_ids=ids)
        unmasked = model(x)
        checked = 0
        for b in range(len(rows)):
            for j in range(len(rows[b])):
                cols = (ids[b] == j).nonzero().flatten()
                alone = model(x[b, cols][None])[0]
                torch.testing.assert_close(packed[b, cols], alone, rtol=1e-5, atol=1e-5)
                checked += 1
        assert checked >= 6
        assert not torch.allclose(packed, unmasked, atol=1e-3)  # without the mask documents do see each other


def test_packed_source_resumes_and_splits_across_ranks(shard_dir):
    a = PackedBatchSource(shard_dir, "train", 4, 32, seed=5, doc_mask=True)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    b = PackedBatchSource(shard_dir, "train", 4, 32, seed=99, doc_mask=True)
    b.load_state_dict(state)
    for _ in range(2):
        assert all(torch.equal(u, v) for u, v in zip(a.next_batch(), b.next_batch(), strict=True))
    # two ranks of batch 2 read exactly the rows of one process with batch 4
    whole = PackedBatchSource(shard_dir, "train", 4, 32, seed=5).next_batch()
    ranks = [PackedBatchSource(shard_dir, "train", 2, 32, seed=5, rank=r, world_size=2).next_batch() for r in (0, 1)]
    for i in range(2):
        assert torch.equal(torch.cat([ranks[0][i], ranks[1][i]]), whole[i])
    # the stream runs on into the next epoch
    c = PackedBatchSource(shard_dir, "train", 4, 32, seed=5)
    rows = len(c.packer.plan(0))
    c.take_rows(rows - 1)
    assert len(c.take_rows(3)) == 3 and (c.epoch, c.next_row) == (1, 2)


def test_training_with_packing_and_doc_mask_resumes_exactly(make_cfg, tmp_path):
    import shutil

    over = ("data.batching=packed", "data.doc_mask=true", "train.max_steps=4", "checkpoint.interval=2",
            "eval.interval=2")
    full = build_trainer(make_cfg(*over, out=tmp_path / "full"), Dist())
    full.fit()
    part = tmp_path / "part" / "checkpoints"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_000002", part / "step_000002")
    resumed = build_trainer(make_cfg(*over, out=tmp_path / "part"), Dist(), resume=True)
    assert resumed.step == 2
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.last_val is not None and full.last_val == resumed.last_val


def test_resume_with_the_other_batching_is_a_clear_error(make_cfg, tmp_path):
    """A checkpoint remembers its batching; resuming it with the other one is refused, both ways."""
    from scratchllm.errors import ScratchError

    packed = ("data.batching=packed", "train.max_steps=2", "checkpoint.interval=2", "eval.interval=0")
    build_trainer(make_cfg(*packed, out=tmp_path / "packed"), Dist()).fit()
    with pytest.raises(ScratchError, match='batching = "packed"'):
        build_trainer(make_cfg("train.max_steps=2", "eval.interval=0", out=tmp_path / "packed"), Dist(), resume=True)
    windows = ("train.max_steps=2", "checkpoint.interval=2", "eval.interval=0")
    build_trainer(make_cfg(*windows, out=tmp_path / "windows"), Dist()).fit()
    with pytest.raises(ScratchError, match='batching = "windows"'):
        build_trainer(make_cfg(*packed, out=tmp_path / "windows"), Dist(), resume=True)
