from __future__ import annotations

import random

import pytest

from scratchllm.data.corpus import embedded_text
from scratchllm.tokenizer import train_bpe

_SCRIPTS = [
    (0x4E00, 0x9FFF),  # CJK ideographs
    (0x3040, 0x30FF),  # hiragana, katakana
    (0xAC00, 0xD7A3),  # hangul
    (0x0600, 0x06FF),  # arabic
    (0x0900, 0x097F),  # devanagari
    (0x0400, 0x04FF),  # cyrillic
    (0x0370, 0x03FF),  # greek
]
_EMOJI = ["🙂", "👍🏽", "👩‍💻", "🇫🇷", "❤️", "🎉", "🤖", "👨‍👩‍👧‍👦", "☕", "🔥🔥🔥"]
_COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "Z\u0335\u0336", "\u0915\u094d\u0937"]
_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\n\n\n", " " * 40, "\t\t  \n", "\u00a0", "\u3000", "\u2003", "\u200b"]
_WORDS = ["don't", "I'LL", "they're", "We'VE", "it's", "O'Neil", "naïve", "café", "Straße", "ﬁnance"]


def mixed_text(n_bytes: int, seed: int = 0) -> str:
    """Prose and code from the embedded corpus interleaved with hard Unicode cases."""
    rng = random.Random(seed)
    base = embedded_text(max_bytes_per_domain=n_bytes // 3)
    lines = base.split("\n")
    out: list[str] = []
    size = 0
    while size < n_bytes:
        kind = rng.random()
        if kind < 0.55:
            piece = lines[rng.randrange(len(lines))]
        elif kind < 0.65:
            lo, hi = rng.choice(_SCRIPTS)
            piece = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 30)))
        elif kind < 0.72:
            piece = "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 5)))
        elif kind < 0.78:
            piece = " ".join(rng.choice(_COMBINING) for _ in range(rng.randint(1, 6)))
        elif kind < 0.86:
            piece = rng.choice([str(rng.randint(0, 10**12)), f"{rng.uniform(-1e6, 1e6):.5f}",
                                f"{rng.randint(0, 999):,}{rng.randint(0, 999_999):,}", "3.14159e-10", "0x1F600"])
        elif kind < 0.93:
            piece = rng.choice(_WORDS)
        else:
            piece = "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 12)))
        piece += rng.choice(_SPACES)
        out.append(piece)
        size += len(piece.encode("utf-8"))
    return "".join(out)


@pytest.fixture(scope="session")
def small_corpus() -> list[str]:
    return embedded_text(max_bytes_per_domain=150_000).split("\n\n")


@pytest.fixture(scope="session")
def small_tokenizer(small_corpus):
    return train_bpe(small_corpus, 1024)
