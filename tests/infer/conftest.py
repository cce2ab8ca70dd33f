from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scratchllm.model.model import ModelConfig, Transformer

VOCAB = 61  # small and odd: nothing may assume a power of two


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A seeded tiny model in eval mode. init_std 0.3 (not 0.02) so that an untrained model's greedy
    output varies from token to token instead of repeating one token: the tests then mean something."""
    kw = dict(vocab_size=VOCAB, context_length=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
              init_std=0.3)
    kw.update(overrides)
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**kw)).eval()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # tests/conftest.py
    pass


@pytest.fixture
def make_model() -> Callable[..., Transformer]:
    return tiny_model


@pytest.fixture(scope="session")
def byte_tokenizer():
    """A tokenizer with no merges (bytes + the default special tokens): fast to build, any text encodes."""
    from scratchllm.tokenizer import train_bpe

    return train_bpe(["hello world"], 256 + 7)
