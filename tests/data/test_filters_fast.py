"""The fast paths of the cleaner and quality filters against straightforward reference code on varied text."""

from __future__ import annotations

import random
import re
import unicodedata

import numpy as np

from scratchllm.corpus.clean import _CONTROL, _ODD_SPACES, _TRAILING_WS, Cleaner
from scratchllm.corpus.config import CleanConfig
from scratchllm.data import filters
from scratchllm.data.config import FiltersConfig, PiiConfig
from scratchllm.data.filters import (
    ENGLISH_COMMON_WORDS, NgramRepeats, PiiScrubber, TextStats, dup_ngram_fraction, language_filter,
    stopword_filter, symbol_filter, top_ngram_fraction,
)

PIECES = [
    "the", "The", "and", "of", "to", "be", "with", "that", "have", "a", "is", "river", "mill", "x", "12", "3.5",
    "#", "...", "\u2026", "-", "*", "\u2022", "caf\u00e9", "\u00fcber", "\u65e5\u672c\u8a9e",
    "\u041f\u0440\u0438\u0432\u0435\u0442",
    "\U0001f642", "e\u0301", "\u00a0", "\u3000", "\u200b", "\ufeff", "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\t",
    "\r\n", "\r", "\n", "\n\n", "\n\n\n\n\n", "  ", " \n", "\t\n", "!", "?", ".", '"', ")", "a_b", "\u2460", "\ufb01",
    "8.8.8.8", "192.168.1.1", "1.2.3", "2a00:1450::1", "a@b.co", "\u0130", "\u212a", "\u017f",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "\n", "\n\n\n", "a", "the the", "x\n" * 60, "word " * 60, "#" * 50, "... " * 40, "- a\n" * 30,
           "The quick.\r\nBrown fox\rjumps.\n\n\n\n\nend  \t\n", "\u2026\n" * 20, "12 34 56 ab", "a b c a b c a b c x"]
    for k in range(n):
        if k % 5 == 0:  # random code points, any plane
            out.append("".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(0, 200))))
        else:
            words = [rng.choice(PIECES[: rng.randint(4, len(PIECES))]) for _ in range(rng.randint(0, 300))]
            out.append("".join(w + rng.choice([" ", " ", " ", "\n", "", "  "]) for w in words))
    return out


def ref_clean(cfg: CleanConfig, text: str) -> str:
    """The cleaner without its shortcuts: every substitution always runs."""
    text = unicodedata.normalize(cfg.unicode, text) if cfg.unicode != "none" else text
    if cfg.normalize_whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.remove_control:
        text = _CONTROL.sub("", text)
    if cfg.normalize_whitespace:
        text = _ODD_SPACES.sub(" ", text)
        text = _TRAILING_WS.sub("", text)
        text = re.sub(r"\n{%d,}" % (cfg.max_blank_lines + 2), "\n" * (cfg.max_blank_lines + 1), text)
        text = text.strip("\n")
        text = text + "\n" if text.strip() else ""
    return text if text.strip() else ""


def test_cleaner_matches_reference():
    for cfg in (CleanConfig(), CleanConfig(unicode="NFKC", max_blank_lines=0), CleanConfig(max_blank_lines=1)):
        cleaner = Cleaner(cfg)
        for text in random_texts(300, seed=1):
            assert cleaner(text, "prose") == ref_clean(cfg, text), repr(text[:80])


def test_ngram_repeats_match_reference():
    rng = np.random.default_rng(0)
    cases = [[], ["a"], "a b c a b c a b c x".split(), ["a"] * 30, "a b a b a b".split()]
    for _ in range(300):
        vocab = int(rng.integers(1, 12))  # small vocabularies: many repeats and ties between n-grams
        words = [f"w{'x' * int(rng.integers(0, 4))}{i}" for i in range(vocab)]
        cases.append([words[i] for i in rng.integers(0, vocab, int(rng.integers(0, 120)))])
    for tokens in cases:
        s = TextStats(" ".join(tokens))
        assert s.tokens == tokens
        total = s.token_chars
        for n in range(1, 11):
            assert s.ngrams.top_fraction(n, total) == top_ngram_fraction(tokens, n, total), (tokens, n)
            assert s.ngrams.dup_fraction(n, total) == dup_ngram_fraction(tokens, n, total), (tokens, n)
    repeats = NgramRepeats(np.array([3, 1, 3, 1, 3, 2]), list(range(7)))  # ids need not be in order of first appearance
    tokens = ["c", "a", "c", "a", "c", "b"]
    for n in range(1, 8):
        assert repeats.dup_fraction(n, 6) == dup_ngram_fraction(tokens, n, 6)
        assert repeats.top_fraction(n, 6) == top_ngram_fraction(tokens, n, 6)
    # equally frequent tokens of different lengths: the earliest wins, whatever the ids' order
    tokens = ["ccc", "a", "a", "ccc"]
    assert NgramRepeats(np.array([3, 1, 1, 3]), [0, 3, 4, 5, 8]).top_fraction(1, 8) == top_ngram_fraction(tokens, 1, 8)


def ref_symbol(c, s: TextStats) -> str | None:
    if not s.words:
        return "no words"
    symbols = s.text.count("#") + s.text.count("...") + s.text.count("\u2026")
    if symbols / len(s.words) > c.max_symbol_word_ratio:
        return f"symbol/word ratio {symbols / len(s.words):.2f}"
    if s.lines:
        if sum(line.startswith(("-", "*", "\u2022", "\u2023", "\u25cf", "\u25e6", "\u2043", "\u2219", "\u25aa",
                                 "\u25ab")) for line in s.lines) / len(s.lines) > c.max_bullet_lines:
            return "mostly bullet lines"
        if sum(line.endswith(("...", "\u2026")) for line in s.lines) / len(s.lines) > c.max_ellipsis_lines:
            return "many lines end with an ellipsis"
    alpha = sum(any(ch.isalpha() for ch in w) for w in s.words) / len(s.words)
    return f"only {alpha:.0%} of words contain a letter" if alpha < c.min_alpha_words else None


def test_token_statistics_match_reference():
    cfg = FiltersConfig()
    cfg.symbols.min_alpha_words = 0.9
    for text in random_texts(400, seed=2):
        s = TextStats(text)
        # stop words and the English function-word share, counted token by token
        stop = set(cfg.stopwords.words)
        count = sum(t in stop for t in s.tokens)
        expected = None if count >= cfg.stopwords.min_count else f"{count} stop words < {cfg.stopwords.min_count}"
        assert stopword_filter(cfg.stopwords, s) == expected
        reason = language_filter(cfg.language, s)
        words = [t for t in s.tokens if t.isalpha()]
        common = sum(t in ENGLISH_COMMON_WORDS for t in words) / max(1, len(words))
        if reason is not None and reason.startswith("English"):
            assert reason == f"English function-word share {common:.0%} < {cfg.language.min_common_words:.0%}"
        elif reason is None:
            assert common >= cfg.language.min_common_words
        assert symbol_filter(cfg.symbols, s) == ref_symbol(cfg.symbols, s), repr(text[:80])
        assert list(s.token_ids) == list(map({t: i for i, t in enumerate(dict.fromkeys(s.tokens))}.get, s.tokens))


def test_pii_shortcuts_match_full_scan(monkeypatch):
    texts = random_texts(200, seed=3) + [
        "at 8.8.8.8.", "v1.2.3.4", "9.9.9.9 and 10.0.0.1", "2a00:1450:4001:81b::200e and fe80::1", "a:b:c:d:e:f:g:h",
        "12:30:45 1:2:3:4:5:6:7:8 ::1", "x[1::2] 2001:db8::1 2606:4700::1111",
    ]
    fast = [PiiScrubber(PiiConfig())(t, "prose") for t in texts]
    with monkeypatch.context() as m:  # the same scrubber, every pattern always run
        m.setattr(filters, "_DIGIT_DOT_DIGIT", re.compile(""))
        m.setattr(filters, "_IPV6_HINT", re.compile(""))
        full = [PiiScrubber(PiiConfig())(t, "prose") for t in texts]
    assert fast == full
    assert "0.0.0.0" in fast[-7] and "0.0.0.0" in fast[-4] and "0.0.0.0" in fast[-1]
