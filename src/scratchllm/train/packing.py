"""BOS-aligned best-fit packing of whole documents into training rows (nanochat's batching).

Random windows (train/data.py) cut the token stream anywhere: most rows begin mid-document. Here
every row of ``seq_len + 1`` tokens is filled with whole documents, each starting with a BOS token
(the tokenizer's BOS, or ``<|eos|>`` when it has none - the separator the shards already use):

* a document of up to a row's length is one piece, ``[BOS] + its tokens`` (ending in its <|eos|>);
  a longer one is split at row boundaries into row-long pieces, each again starting with a BOS;
* pieces enter a buffer in a shuffled order (a new order each epoch); each row starts with the
  oldest buffered piece, then takes, while space remains, the longest buffered piece that fits
  (best fit), and is padded when none does. Starting from the oldest keeps the rows in stream
  order: with pure best fit, row-long pieces (of split documents) would always jump the queue and
  the first rows of an epoch would hold only long documents;
* the finished rows are shuffled, so that a batch holds rows of many documents, not the
  consecutive pieces of one long document (the share of each batch from one document then is what
  random windows give).

No document token is lost or duplicated in an epoch (nanochat instead crops a piece to fill the
row, discarding the rest); the cost is padding, reported as ``padding_share``. Targets that cross
a piece boundary (a document's last token "predicting" the next BOS, or padding) are -100. With
``doc_ids`` the model also masks attention to the current piece and restarts positions at it.

The plan of an epoch (which pieces go in which row) is computed from the shard indexes alone, and
the state is (epoch, row): a resumed run rebuilds the plan and continues with the same rows. As
with random windows, each step draws ``batch_size * world_size`` consecutive rows and process
``rank`` keeps its share, so the data does not depend on the number of processes.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchllm.corpus.shards import ShardDataset
from scratchllm.errors import ScratchError
from scratchllm.model.model import IGNORE_INDEX

Piece = tuple[int, int, int, int]  # (document index, shard, start offset, token count), after an implied BOS


class DocumentPacker:
    """Per-epoch plans of packed rows over the documents of one split."""

    def __init__(self, dataset: ShardDataset, seq_len: int, seed: int, buffer_size: int = 1000) -> None:
        self.dataset = dataset
        self.row_len = seq_len + 1
        self.seed, self.buffer_size = seed, buffer_size
        manifest = dataset.manifest
        bos = manifest.get("bos_id")
        self.bos = int(bos if bos is not None else manifest["eos_id"])
        self.pad = self.bos  # the filler's id is irrelevant: no target and (with doc masks) no attention
        docs = []  # (shard, start, length) of every document, in shard order
        shard_no = 0
        for entry in dataset._entries:
            if not entry["tokens"]:
                continue
            index = np.load(dataset.root / entry["index"])
            docs.extend((shard_no, int(s), int(n)) for s, n, _ in index if n > 0)
            shard_no += 1
        if not docs:
            raise ScratchError(f"the {dataset.split} split has no documents to pack", "prepare more data")
        self.docs = docs
        self._plan: tuple[int, list[list[Piece]]] | None = None

    def pieces(self, doc: int) -> list[Piece]:
        """The pieces of document ``doc``: row-long ones first, the remainder last."""
        shard, start, n = self.docs[doc]
        step = self.row_len - 1  # doc tokens per full piece (plus its BOS)
        return [(doc, shard, start + k, min(step, n - k)) for k in range(0, n, step)]

    def plan(self, epoch: int) -> list[list[Piece]]:
        """The rows of ``epoch``: lists of pieces, each row at most ``row_len`` tokens (BOS included)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))
        stream = (p for d in order for p in self.pieces(int(d)))
        keys: list[tuple[int, int]] = []  # (length, arrival) sorted; best fit = the largest length <= space
        pieces: OrderedDict[int, Piece] = OrderedDict()  # by arrival: the first is the oldest (O(1))
        arrival = 0
        rows: list[list[Piece]] = []
        row: list[Piece] = []
        space = self.row_len
        exhausted = False
        while True:
            while not exhausted and len(keys) < self.buffer_size:
                p = next(stream, None)
                if p is None:
                    exhausted = True
                    break
                bisect.insort(keys, (p[3] + 1, arrival))
                pieces[arrival] = p
                arrival += 1
            if not keys:
                break
            if not row:  # a row starts with the oldest waiting piece: none waits longer than the buffer's turn
                key = next(iter(pieces))
                length = pieces[key][3] + 1
                keys.pop(bisect.bisect_left(keys, (length, key)))
            else:
                i = bisect.bisect_right(keys, (space, arrival)) - 1
                if i < 0:  # nothing fits: pad the rest of this row
                    rows.append(row)
                    row, space = [], self.row_len
                    continue
                length, key = keys.pop(i)
            row.append(pieces.pop(key))
            space -= length
            if space == 0:
                rows.append(row)
                row, space = [], self.row_len
        if row:
            rows.append(row)
        # Rows in a random order: built in stream order, the row-long pieces of one long document fill
        # consecutive rows, and a step's batch could hold a single document (on the default data, 29%
        # of 16-row batches held <= 2 documents; those runs ended ~0.2 nats worse than random windows).
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(rows))
        rows = [rows[i] for i in order]
        self._plan = (epoch, rows)
        return rows

    def stats(self, epoch: int = 0) -> dict[str, float]:
        """Rows, and the shares of padding and of added BOS tokens among all row tokens of an epoch."""
        rows = self.plan(epoch)
        total = len(rows) * self.row_len
        used = sum(p[3] + 1 for r in rows for p in r)
        bos = sum(len(r) for r in rows)
        return {"rows": len(rows), "padding_share": 1 - used / total, "bos_share": bos / total,
                "split_documents": sum(1 for d in self.docs if d[2] > self.row_len - 1)}

    def row(self, pieces: list[Piece]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, piece number per token; -1 for padding), each of ``row_len``."""
        tokens = np.full(self.row_len, self.pad, dtype=np.int64)
        ids = np.full(self.row_len, -1, dtype=np.int64)
        o = 0
        for j, (_, shard, start, n) in enumerate(pieces):
            tokens[o] = self.bos
            tokens[o + 1 : o + 1 + n] = self.dataset.shards[shard][start : start + n]
            ids[o : o + 1 + n] = j
            o += n + 1
        return tokens, ids


def packed_batch(packer: DocumentPacker, rows: list[list[Piece]], doc_mask: bool) -> tuple[torch.Tensor, ...]:
    """(x, y) or, with doc_mask, (x, y, doc_ids): y = -100 where the next token is another piece's or padding."""
    built = [packer.row(r) for r in rows]
    tokens = torch.from_numpy(np.stack([t for t, _ in built]))
    ids = torch.from_numpy(np.stack([i for _, i in built]))
    if tokens.numel() and int(tokens.max()) >= packer.dataset.vocab_size:
        raise ScratchError(f"the {packer.dataset.split} data holds a token id outside the vocabulary of "
                           f"{packer.dataset.vocab_size} (corrupt shards)",
                           f"check it with `scratchllm data verify {packer.dataset.root}`")
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].clone()
    y[(ids[:, 1:] != ids[:, :-1]) | (ids[:, 1:] < 0)] = IGNORE_INDEX
    if doc_mask:
        return x, y, ids[:, :-1].contiguous()
    return x, y


class PackedBatchSource:
    """Micro-batches of packed rows for this rank; state (epoch, row) for exact resume."""

    def __init__(self, path: str | Path, split: str, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1, doc_mask: bool = False, buffer_size: int = 1000) -> None:
        self.dataset = ShardDataset(path, split, seed)
        self.dataset.start_verification()
        self.packer = DocumentPacker(self.dataset, seq_len, seed, buffer_size)
        self.batch_size, self.rank, self.world_size, self.doc_mask = batch_size, rank, world_size, doc_mask
        self.epoch, self.next_row = 0, 0

    def check_verified(self) -> None:
        self.dataset.check_verified(wait=True)

    def take_rows(self, n: int) -> list[list[Piece]]:
        """The next ``n`` rows of the global stream (into the next epoch when this one runs out)."""
        out: list[list[Piece]] = []
        while len(out) < n:
            plan = self.packer.plan(self.epoch)
            take = plan[self.next_row : self.next_row + n - len(out)]
            out.extend(take)
            self.next_row += len(take)
            if self.next_row >= len(plan):
                self.epoch, self.next_row = self.epoch + 1, 0
        return out

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        rows = self.take_rows(self.batch_size * self.world_size)
        mine = rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        self.dataset.check_verified(wait=False)
        return packed_batch(self.packer, mine, self.doc_mask)

    def state_dict(self) -> dict[str, Any]:
        return {"packed": True, "seed": self.packer.seed, "epoch": self.epoch, "row": self.next_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("packed"):
            raise ScratchError("the checkpoint was written with data.batching = \"windows\"",
                               "resume with the batching the run started with")
        self.packer.seed, self.epoch, self.next_row = int(state["seed"]), int(state["epoch"]), int(state["row"])


def fixed_packed_batches(path: str | Path, split: str, n: int, batch_size: int, seq_len: int, seed: int,
                         rank: int = 0, world_size: int = 1, doc_mask: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """The first ``n`` micro-batches of the split's packed rows (validation: the same every eval)."""
    source = PackedBatchSource(path, split, batch_size, seq_len, seed, rank, world_size, doc_mask)
    plan = source.packer.plan(0)
    n = min(n, max(1, len(plan) // (batch_size * world_size)))  # a small split: at most one epoch
    return [source.next_batch() for _ in range(n)]
