"""Batches for pre-training from prepared shards, sharded across data-parallel processes.

There is one global stream of random windows, the same on every process: each step draws
``batch_size * world_size`` windows from the shared generator and process ``rank`` keeps rows
``rank*batch_size .. (rank+1)*batch_size``. So the data seen does not depend on how many processes
share it (2 processes x batch b are literally the rows of 1 process x batch 2b), and the
data-loader state is identical on every rank: rank 0's copy in the checkpoint resumes them all.
The cost is that every process draws all global row indices (cheap) - only its own rows are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from scratchllm.corpus.shards import ShardDataset
from scratchllm.errors import ScratchError


class BatchSource(Protocol):
    """What the Trainer pulls micro-batches from; fine-tuning and alignment bring their own."""

    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _rank_rows(dataset: ShardDataset, batch_size: int, seq_len: int, rank: int, world_size: int,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if world_size == 1:
        return dataset.sample_batch(batch_size, seq_len, generator)
    # Draw the global batch's window positions exactly as ShardDataset would, but read only ours.
    x, y = dataset.sample_batch(batch_size * world_size, seq_len, generator)
    rows = slice(rank * batch_size, (rank + 1) * batch_size)
    return x[rows].contiguous(), y[rows].contiguous()


class ShardBatchSource:
    """(x, y) micro-batches of shape (batch_size, seq_len) for this rank from a shard split."""

    def __init__(self, path: str | Path, split: str, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.dataset = ShardDataset(path, split, seed)
        self.dataset.start_verification()  # sizes were checked on open; the full hash runs beside training
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size

    def check_verified(self) -> None:
        """Wait for the shard checksums and raise if one differs (the Trainer calls it before a save,
        so no checkpoint ever records training on corrupt data)."""
        self.dataset.check_verified(wait=True)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _rank_rows(self.dataset, self.batch_size, self.seq_len, self.rank, self.world_size)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("packed"):
            raise ScratchError('the checkpoint was written with data.batching = "packed"',
                               "resume with the batching the run started with")
        self.dataset.load_state_dict(state)


def fixed_batches(path: str | Path, split: str, n: int, batch_size: int, seq_len: int, seed: int,
                  rank: int = 0, world_size: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` micro-batches of windows chosen once by ``seed`` (the validation set: same every eval)."""
    dataset = ShardDataset(path, split, seed)
    g = torch.Generator().manual_seed(seed)
    return [_rank_rows(dataset, batch_size, seq_len, rank, world_size, g) for _ in range(n)]


def unigram_entropy(path: str | Path, split: str = "train", max_tokens: int = 50_000_000) -> float:
    """Entropy (nats/token) of the split's token frequencies: the loss of the best context-free model.

    A language model that has learned anything beyond token frequencies must go below this.
    """
    dataset = ShardDataset(path, split)
    counts = np.zeros(dataset.vocab_size, dtype=np.int64)
    left = max_tokens
    for shard in dataset.shards:
        part = np.asarray(shard[:left])
        counts += np.bincount(part, minlength=dataset.vocab_size)[: dataset.vocab_size]
        left -= len(part)
        if left <= 0:
            break
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
