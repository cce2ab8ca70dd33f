"""Fixtures for the training tests: tiny byte-level shards written with the data package's writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scratchllm.config import load_config
from scratchllm.corpus.shards import ShardWriter, split_summary, token_dtype, write_manifest
from scratchllm.train.config import TrainConfig

VOCAB = 257  # bytes 0..255 plus <|eos|> = 256
EOS = 256
TINY_MODEL = {"vocab_size": VOCAB, "context_length": 64, "d_model": 32, "n_layers": 2, "n_heads": 4,
              "n_kv_heads": 2, "d_ff": 64}


def write_byte_shards(out: Path, text: str, val_every: int = 20, shard_tokens: int = 40_000) -> Path:
    """Documents = paragraphs of ``text`` as UTF-8 bytes; every val_every-th one goes to the val split."""
    docs = [p for p in text.split("\n\n") if p.strip()]
    dtype = token_dtype(VOCAB)
    splits = {}
    for split in ("train", "val"):
        with ShardWriter(out, split, dtype, shard_tokens, ["text"]) as w:
            for i, doc in enumerate(docs):
                if (i % val_every == 0) == (split == "val"):
                    ids = np.frombuffer(doc.encode("utf-8"), dtype=np.uint8).astype(np.int64)
                    w.add(np.append(ids, EOS), "text")
        splits[split] = split_summary(w.shards)
    write_manifest(out, {"dtype": dtype.name, "vocab_size": VOCAB, "eos_id": EOS, "bos_id": None,
                         "tokenizer": "", "domains": ["text"], "splits": splits})
    return out


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    from scratchllm.corpus.embedded import embedded_text

    text = embedded_text(max_bytes_per_domain=150_000)
    return write_byte_shards(tmp_path_factory.mktemp("shards"), text)


@pytest.fixture
def make_cfg(shard_dir, tmp_path):
    """TrainConfig for the tiny model on the byte shards; overrides as "key=value" strings."""

    def make(*overrides: str, out: Path | None = None) -> TrainConfig:
        base = [f"out_dir={str(out or tmp_path / 'run')!r}".replace("'", '"'), f'data.path="{shard_dir}"',
                "data.seq_len=32", "train.batch_size=4", "train.max_steps=6", "train.num_threads=1",
                "schedule.warmup_steps=2", "eval.interval=0", "eval.batches=2", "eval.sample_tokens=0",
                "checkpoint.interval=0", "log.interval=1", "log.tensorboard=false", "log.progress=false",
                "optim.lr=3e-3"]
        base += [f"model.{k}={v}" for k, v in TINY_MODEL.items()]
        return load_config(TrainConfig, None, [*base, *overrides])

    return make


def random_batch(n: int, seed: int = 1, T: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, VOCAB, (n, T + 1), generator=torch.Generator().manual_seed(seed))
    return data[:, :-1], data[:, 1:]


@pytest.fixture
def make_batch():
    """make_batch(n, seed=1, T=32) -> (x, y) of random byte tokens."""
    return random_batch


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # tests/conftest.py
    pass
