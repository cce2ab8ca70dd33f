from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scratchllm.model.model import ModelConfig, Transformer

VOCAB = 97  # small and odd on purpose: nothing may assume a power of two


def _config(**overrides) -> ModelConfig:
    kw = dict(vocab_size=VOCAB, context_length=32, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=80)
    kw.update(overrides)
    cfg = ModelConfig(**kw)
    cfg.validate()
    return cfg


def _model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(_config(**overrides)).eval()


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    """A tiny config (vocab 97, context 32, d_model 48, 2 layers, 4 heads, 2 KV heads) with overrides."""
    return _config


@pytest.fixture
def make_model() -> Callable[..., Transformer]:
    """A seeded tiny model in eval mode: make_model(seed=0, **config_overrides)."""
    return _model


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(1))
