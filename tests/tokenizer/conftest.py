from __future__ import annotations

import pytest

from scratchllm.corpus.embedded import embedded_text
from scratchllm.tokenizer import train_bpe


@pytest.fixture(scope="session")
def small_corpus() -> list[str]:
    return embedded_text(max_bytes_per_domain=150_000).split("\n\n")


@pytest.fixture(scope="session")
def small_tokenizer(small_corpus):
    return train_bpe(small_corpus, 1024)
