from __future__ import annotations

import pytest
import torch

from scratchllm.model.model import ModelConfig, Transformer

TEXT = "the cat sat on the mat. the dog sat on the log. def f(x): return x + 1\n" * 4


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # tests/conftest.py
    pass


@pytest.fixture(scope="session")
def tokenizer():
    from scratchllm.tokenizer import train_bpe

    return train_bpe([TEXT], 256 + 7 + 40)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny model directory with its tokenizer inside, as training writes it."""
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=32, d_model=32, n_layers=2, n_heads=4,
                      n_kv_heads=2, d_ff=64, init_std=0.3)
    Transformer(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d
