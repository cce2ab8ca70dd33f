"""Fixtures for the fine-tuning tests: a small BPE tokenizer with the chat special tokens."""

from __future__ import annotations

import pytest

from scratchllm.corpus.embedded import embedded_text
from scratchllm.tasks.instruct import embedded_instructions
from scratchllm.tokenizer import train_bpe


@pytest.fixture(scope="session")
def chat_tokenizer():
    texts = embedded_text(domains=("prose",), max_bytes_per_domain=60_000).split("\n\n")
    texts += [m["content"] for e in embedded_instructions(400, "train", seed=0) for m in e.messages]
    return train_bpe(texts, 512)
