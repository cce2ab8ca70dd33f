from __future__ import annotations

import torch

from scratchllm.data.continuations import model_documents
from scratchllm.model.model import ModelConfig, Transformer


def test_model_continuations_from_a_tiny_checkpoint(tmp_path, bpe_tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=bpe_tokenizer.vocab_size, context_length=32, d_model=32, n_layers=1, n_heads=2)
    Transformer(cfg).save_pretrained(tmp_path / "ckpt")
    prompts = ["The quick brown fox", "def add(a, b):"]
    docs = list(model_documents(tmp_path / "ckpt", bpe_tokenizer, prompts, count=3, max_new_tokens=40, seed=0))
    again = list(model_documents(tmp_path / "ckpt", bpe_tokenizer, prompts, count=3, max_new_tokens=40, seed=0))
    assert docs == again  # seeded sampling
    assert [d.text.startswith(p) for d, p in zip(docs, prompts * 2, strict=False)] == [True] * 3
    assert all(len(d.text) > len(prompts[i % 2]) for i, d in enumerate(docs))  # something was generated
    assert all(d.domain == "synthetic" and d.source.startswith("model:ckpt#") for d in docs)
