from __future__ import annotations

import random
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import ScratchError
from scratchllm.tokenizer import DEFAULT_SPECIAL_TOKENS, GPT2_PATTERN, Tokenizer, train_bpe
from scratchllm.tokenizer import bpe
from scratchllm.tokenizer.patterns import PATTERNS, compile_ascii_pattern, compile_pattern


def naive_train(texts, num_merges, pattern, min_frequency=2):
    """Textbook BPE: recount every pair after every merge. Same tie-break as ours (count, then smaller pair)."""
    counts = Counter(c for t in texts for c in regex.findall(pattern, t))
    words = {tuple(c.encode()): f for c, f in counts.items()}
    seen = {bytes([b]) for b in range(256)}
    vocab = {b: bytes([b]) for b in range(256)}
    merges, banned = [], set()
    while len(merges) < num_merges:
        pairs = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        candidates = [(c, p) for p, c in pairs.items() if p not in banned and c >= min_frequency]
        if not candidates:
            break
        c, p = min(candidates, key=lambda cp: (-cp[0], cp[1]))
        if vocab[p[0]] + vocab[p[1]] in seen:
            banned.add(p)
            continue
        new = 256 + len(merges)
        merges.append((p[0], p[1], new))
        vocab[new] = vocab[p[0]] + vocab[p[1]]
        seen.add(vocab[new])
        merged = {}
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == p:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + f
        words = merged
    return merges


def test_incremental_trainer_equals_full_recount(small_corpus):
    texts = small_corpus[:150]
    tok = train_bpe(texts, 256 + 300, special_tokens=[])
    assert [tuple(m) for m in tok.merges] == naive_train(texts, 300, tok.pattern)


def test_round_trip_and_special_ids(small_tokenizer):
    tok = small_tokenizer
    assert tok.vocab_size == 1024
    assert [tok.special_tokens[s] for s in DEFAULT_SPECIAL_TOKENS] == list(range(1024 - 7, 1024))
    text = "Hello world!\n\tdef f(x):  return x ** 2  # ünïcödé 你好 🙂"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("the the the")) < len("the the the")  # merges actually compress


def test_special_tokens_allowed_and_disallowed(small_tokenizer):
    tok = small_tokenizer
    text = "hi<|eos|>there<|user|>"
    assert tok.encode(text, allowed_special="all") == tok.encode("hi") + [tok.eos_id] + tok.encode("there") + [
        tok.special_tokens["<|user|>"]
    ]
    plain = tok.encode(text)  # default: special text is ordinary text, never a control token
    assert tok.eos_id not in plain and tok.decode(plain) == text
    only_eos = tok.encode(text, allowed_special={"<|eos|>"})
    assert tok.eos_id in only_eos and tok.special_tokens["<|user|>"] not in only_eos
    with pytest.raises(ScratchError, match="unknown special token"):
        tok.encode(text, allowed_special={"<|nope|>"})


def test_special_tokens_are_never_split_by_bpe(small_corpus):
    # Even when the corpus is full of the special-token text, BPE never learns it as a merge result.
    tok = train_bpe(small_corpus[:50] + ["<|eos|>" * 500], 600)
    assert all(tok.id_to_bytes(i) != b"<|eos|>" for i in range(256, 256 + len(tok.merges)))
    assert tok.encode("<|eos|>", allowed_special="all") == [tok.eos_id]


def test_long_chunk_path_matches_short_path(small_tokenizer):
    rng = random.Random(0)
    tok = small_tokenizer
    for _ in range(50):
        data = "".join(rng.choice(["ab", "the", " ", "e", "x", "é", "你"]) for _ in range(rng.randint(30, 200)))
        raw = data.encode()
        ids = list(raw)
        assert tok._encode_long(list(ids)) == _short_path(tok, ids)


def _short_path(tok, ids):
    # The O(n^2) loop without the length cut-over.
    old = bpe._LONG_CHUNK
    bpe._LONG_CHUNK = 10**9
    try:
        return tok._encode_chunk(bytes(ids))
    finally:
        bpe._LONG_CHUNK = old


def _reference_bpe(tok, data):
    # Textbook merge-order BPE: repeatedly merge the leftmost lowest-rank pair. No cache, no shortcut.
    ranks = {(a, b): rank for rank, (a, b, _) in enumerate(tok.merges)}
    ids = [tok.byte_ids[b] for b in data]
    while True:
        found = [(ranks[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in ranks]
        if not found:
            return ids
        rank, i = min(found)
        ids[i : i + 2] = [tok.merges[rank][2]]


def test_split_and_shortcuts_match_textbook_bpe():
    from scratchllm.corpus.embedded import unicode_stress_text

    text = unicode_stress_text(300_000, seed=3)
    tok = train_bpe([text[:150_000]], 1500)
    chunks = sorted(set(tok._pat.findall(text[150_000:])))
    assert sum(not c.isascii() for c in chunks) > 500
    cuts = 0
    for chunk in chunks:
        data = chunk.encode()
        expected = _reference_bpe(tok, data)
        assert tok._split_encode(data) == expected, chunk
        assert tok._encode_chunk(data) == expected, chunk
        cuts += any(not tok._joinable[x][y] for x, y in zip(data, data[1:]))
    assert cuts > 500  # the piece-by-piece path was really exercised
    held_out = text[150_000:]
    assert tok.encode(held_out) == [i for c in tok._pat.findall(held_out) for i in _reference_bpe(tok, c.encode())]


def test_unreachable_token_is_not_a_shortcut():
    # "abc" is token 258 = (257 "ab", c), but BPE of "abc" merges (b, c) first (rank 0, token 256)
    # and stops at [a, 256]: the whole-token shortcut must not return 258.
    a, b, c = b"abc"
    tok = Tokenizer("gpt4", [(b, c, 256), (a, b, 257), (257, c, 258)])
    assert tok.id_to_bytes(258) == b"abc"
    assert tok.encode("abc") == [a, 256] == _reference_bpe(tok, b"abc")
    assert tok.encode("ab") == [257]
    assert b"abc" not in tok._whole_tokens


def test_encode_batch_parallel_matches_serial(small_tokenizer, monkeypatch, small_corpus):
    monkeypatch.setattr(bpe, "_PARALLEL_MIN_CHARS", 0)
    docs = small_corpus[:40]
    assert small_tokenizer.encode_batch(docs, num_workers=2) == [small_tokenizer.encode(d) for d in docs]


def test_save_load_round_trip(tmp_path, small_tokenizer):
    tok = small_tokenizer
    tok.save_pretrained(tmp_path / "t")
    for path in (tmp_path / "t", tmp_path / "t" / "scratchllm_tokenizer.json", tmp_path / "t" / "tokenizer.json"):
        again = Tokenizer.load(path)
        assert again.vocab_size == tok.vocab_size and again.special_tokens == tok.special_tokens
        text = "a mixed text: x = 42 ✓"
        assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_pickle_round_trip(small_tokenizer):
    import pickle

    again = pickle.loads(pickle.dumps(small_tokenizer))
    assert again.encode("pickled text") == small_tokenizer.encode("pickled text")


def test_gpt2_pattern_and_min_frequency(small_corpus):
    tok = train_bpe(small_corpus[:20], 5000, pattern="gpt2", min_frequency=3)
    assert tok.pattern == GPT2_PATTERN
    assert 263 < tok.vocab_size < 5000  # the corpus runs out of pairs seen 3+ times


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(texts=["abc"], vocab_size=200), "vocab_size 200 is too small.*at least 263"),
        (dict(texts=[], vocab_size=300), "training corpus is empty"),
        (dict(texts=[""], vocab_size=300), "training corpus is empty"),
        (dict(texts=["abc"], vocab_size=300, special_tokens=["<a>", "<a>"]), "duplicates"),
        (dict(texts=["abc"], vocab_size=300, pattern="(unclosed"), "invalid pre-tokenization regex"),
    ],
)
def test_training_errors(kwargs, match):
    with pytest.raises(ScratchError, match=match):
        train_bpe(**kwargs)


def test_load_errors(tmp_path):
    with pytest.raises(ScratchError, match="tokenizer not found"):
        Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(ScratchError, match="no tokenizer in directory"):
        Tokenizer.load(tmp_path)
    bad = tmp_path / "t.json"
    bad.write_text('{"format": "scratchllm-bpe", "version": 1, "pattern": "gpt4", "merges": [[1, 2')
    with pytest.raises(ScratchError, match="corrupt or truncated"):
        Tokenizer.load(bad)
    bad.write_text('{"format": "scratchllm-bpe", "version": 1, "pattern": "gpt4", "merges": [[1, 9999, 256]]}')
    with pytest.raises(ScratchError, match="is corrupt"):
        Tokenizer.load(bad)
    bad.write_text('{"hello": 1}')
    with pytest.raises(ScratchError, match="not a scratchllm tokenizer"):
        Tokenizer.load(bad)


def test_decode_out_of_range(small_tokenizer):
    with pytest.raises(ScratchError, match="out of range"):
        small_tokenizer.decode([1, 10**6])


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_inverts_encode_for_any_unicode(small_tokenizer, s):
    assert small_tokenizer.decode(small_tokenizer.encode(s)) == s
    assert small_tokenizer.decode(small_tokenizer.encode(s, allowed_special="all")) == s


# Every ASCII character, weighted towards the ones the patterns treat specially.
_ASCII_TEXT = st.lists(
    st.one_of(st.characters(max_codepoint=127), st.sampled_from(["'s", "'LL", "'Re", " ", "\n", "\r\n", "\t", "123"])),
    max_size=60,
).map("".join)


@pytest.mark.parametrize("name", ["gpt2", "gpt4"])
@settings(max_examples=400, deadline=None)
@given(text=_ASCII_TEXT)
def test_ascii_pattern_splits_like_the_unicode_pattern(name, text):
    # encode_ordinary splits pure-ASCII text with the `re` spelling of the pattern: it must agree.
    fast = compile_ascii_pattern(PATTERNS[name])
    assert fast is not None
    assert fast.findall(text) == compile_pattern(name).findall(text)


def test_ascii_pattern_on_every_ascii_character_and_real_text(small_corpus):
    every = "".join(chr(c) + chr(d) for c in range(128) for d in (32, 10, 39, 65, 48, c))
    texts = [every, "\n\n".join(d for d in small_corpus[:400] if d.isascii()), " \x1c\x1d\x1e\x1f \x0b\x0c x\r\n\r\n y\t\t\n"]
    for name, pattern in PATTERNS.items():
        for text in texts:
            assert text.isascii()
            assert compile_ascii_pattern(pattern).findall(text) == compile_pattern(name).findall(text)
    assert compile_ascii_pattern(r"\w+|\s") is None  # a custom pattern has no fast spelling


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(_ASCII_TEXT, st.text(max_size=60)))
def test_encode_matches_textbook_bpe_on_random_text(small_tokenizer, text):
    # Whatever path a chunk takes (ASCII split, cache, whole token, cut pieces), ids are textbook BPE.
    tok = small_tokenizer
    expected = [i for c in tok._pat.findall(text) for i in _reference_bpe(tok, c.encode())]
    assert tok.encode(text) == expected
