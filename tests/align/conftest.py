"""Fixtures for the alignment tests: a byte-level chat tokenizer and tiny models."""

from __future__ import annotations

import pytest
import torch

from scratchllm.model.model import ModelConfig, Transformer

TINY = dict(context_length=96, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)


@pytest.fixture(scope="session")
def tokenizer():
    """Bytes plus the default special tokens (<|bos|> ... <|end|>): vocab 263, no merges."""
    from scratchllm.tokenizer import train_bpe

    return train_bpe(["x"], vocab_size=263)


def tiny_model(tokenizer, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **{**TINY, **overrides}))


@pytest.fixture(scope="session")
def make_model(tokenizer):
    """make_model(seed=0, **config overrides) -> a tiny Transformer for the byte-level chat tokenizer."""
    return lambda seed=0, **kw: tiny_model(tokenizer, seed, **kw)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
