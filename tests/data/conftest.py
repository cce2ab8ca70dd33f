from __future__ import annotations

import pytest

from scratchllm.corpus.embedded import embedded_text


class ByteTokenizer:
    """Stand-in with the Tokenizer API: ids are UTF-8 bytes, 256 = <|eos|>."""

    vocab_size = 258
    eos_id = 256
    bos_id = 257
    fingerprint = "bytes-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts, num_workers=None, progress=False):
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.fixture
def byte_tokenizer():
    return ByteTokenizer()


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory):
    """A real scratchllm BPE tokenizer (vocab 400), trained in about a second and saved to a folder."""
    from scratchllm.tokenizer import train_bpe

    tok = train_bpe([embedded_text(max_bytes_per_domain=60_000)], vocab_size=400)
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_dir):
    from scratchllm.tokenizer import Tokenizer

    return Tokenizer.load(bpe_dir)
