"""Our tokenizer against the industry implementations: tiktoken, HF tokenizers, transformers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer, train_bpe
from scratchllm.tokenizer.hf import to_hf_dict

from scratchllm.corpus.embedded import embedded_text, unicode_stress_text

tiktoken = pytest.importorskip("tiktoken")
hf_tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def mixed():
    text = unicode_stress_text(1_100_000, seed=1)
    assert len(text.encode("utf-8")) >= 1_000_000
    return text


@pytest.fixture(scope="module", params=["gpt4", "gpt2"])
def trained(request, mixed):
    # Train on part of the text so that the compared part also contains unseen words.
    return train_bpe([mixed[:400_000]], 3000, pattern=request.param)


def as_tiktoken(tok: Tokenizer):
    return tiktoken.Encoding(
        "scratchllm", pat_str=tok.pattern, mergeable_ranks=tok.mergeable_ranks(), special_tokens=tok.special_tokens
    )


def as_hf(tok: Tokenizer):
    return hf_tokenizers.Tokenizer.from_str(json.dumps(to_hf_dict(tok)))


def test_same_ids_as_tiktoken_on_1mb_mixed_text(trained, mixed):
    enc = as_tiktoken(trained)
    ours = trained.encode(mixed)
    assert ours == enc.encode_ordinary(mixed)
    with_specials = mixed[:5000] + "<|eos|>" + mixed[5000:10000] + "<|user|>"
    assert trained.encode(with_specials, allowed_special="all") == enc.encode(with_specials, allowed_special="all")


def test_same_ids_as_hf_tokenizers_on_1mb_mixed_text(trained, mixed):
    hf = as_hf(trained)
    ours = trained.encode(mixed, allowed_special="all")
    assert ours == hf.encode(mixed).ids
    assert hf.decode(ours, skip_special_tokens=False) == mixed
    text = "x<|bos|>y<|assistant|>z"
    assert trained.encode(text, allowed_special="all") == hf.encode(text).ids


def test_import_hf_trained_tokenizer_with_other_id_layout(mixed):
    # A tokenizer trained by HF itself (GPT-2 style ByteLevel pre-tokenizer, HF's own id layout,
    # possibly with two merges reaching one token) imports and encodes exactly as HF does.
    from tokenizers import models, pre_tokenizers, trainers

    hf = hf_tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator([mixed[:200_000]], trainer=trainer)
    ours = Tokenizer.load_hf_json(hf.to_str())
    sample = mixed[200_000:400_000] + "<s> a </s>"
    assert ours.encode(sample, allowed_special="all") == hf.encode(sample).ids


def test_trainer_bytes_per_token_within_1pct_of_hf(mixed):
    from tokenizers import Regex, models, pre_tokenizers, trainers

    corpus = [mixed[i : i + 20_000] for i in range(0, 700_000, 20_000)]
    held_out = mixed[700_000:1_000_000]
    vocab = 4096
    ours = train_bpe(corpus, vocab, pattern="gpt4")
    hf = hf_tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(ours.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=list(DEFAULT_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(corpus, trainer=trainer)
    assert hf.get_vocab_size() == ours.vocab_size == vocab
    n = len(held_out.encode("utf-8"))
    ours_bpt = n / len(ours.encode(held_out))
    hf_bpt = n / len(hf.encode(held_out).ids)
    assert abs(ours_bpt - hf_bpt) / hf_bpt < 0.01, (ours_bpt, hf_bpt)


def test_transformers_autotokenizer_loads_our_export(tmp_path, trained):
    transformers = pytest.importorskip("transformers")
    trained.save_pretrained(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello <|bos|> world 🙂 你好\n\n  def f(): pass"
    assert auto(text)["input_ids"] == trained.encode(text, allowed_special="all")
    assert auto.decode(trained.encode(text, allowed_special="all")) == text
    assert auto.eos_token == "<|eos|>" and auto.eos_token_id == trained.eos_id
    assert auto.pad_token_id == trained.pad_id and auto.bos_token_id == trained.bos_id


def test_same_ids_as_tiktoken_on_ascii_text(trained):
    # Pure-ASCII text takes the `re` split (patterns.ASCII_PATTERNS): same ids as tiktoken.
    docs = embedded_text(max_bytes_per_domain=150_000).split("\n\n")
    text = "\n\n".join(d for d in docs if d.isascii()) + " \x1c\x1d x\x0b\x0c\r\n 'S 'll 12345 ?!\t\n"
    assert text.isascii()
    assert Tokenizer.from_dict(trained.to_dict()).encode(text) == as_tiktoken(trained).encode_ordinary(text)


def test_same_ids_as_tiktoken_on_random_unicode(trained):
    enc = as_tiktoken(trained)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(max_size=80), st.text(st.characters(max_codepoint=127), max_size=80)))
    def check(text):
        assert trained.encode(text) == enc.encode_ordinary(text)

    check()
