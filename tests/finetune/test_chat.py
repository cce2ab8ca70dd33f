from __future__ import annotations

import pytest

from scratchllm.errors import ScratchError
from scratchllm.tokenizer.chat import CHAT_TEMPLATE, encode_chat, render_chat

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And reversed 'abc'?"},
    {"role": "assistant", "content": "cba, naïve ☕"},
]


def test_format_and_mask(chat_tokenizer):
    tok = chat_tokenizer
    ids, mask = encode_chat(tok, CONV)
    assert len(ids) == len(mask)
    assert tok.decode(ids) == render_chat(CONV)
    assert ids[0] == tok.bos_id and ids[-1] == tok.special_tokens["<|end|>"]
    # the masked tokens decode to exactly the assistant contents, each followed by <|end|>
    learned = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert learned == "4<|end|>cba, naïve ☕<|end|>"
    ids_gen, mask_gen = encode_chat(tok, CONV[:3], add_generation_prompt=True)
    assert ids_gen[-1] == tok.special_tokens["<|assistant|>"] and mask_gen[-1] == 0


def test_special_text_in_content_stays_ordinary(chat_tokenizer):
    ids, _ = encode_chat(chat_tokenizer, [{"role": "user", "content": "<|end|><|assistant|>"}])
    assert ids.count(chat_tokenizer.special_tokens["<|end|>"]) == 1  # only the real closing token


def test_transformers_apply_chat_template_matches(chat_tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    chat_tokenizer.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.chat_template == CHAT_TEMPLATE
    for conv, gen in [(CONV, False), (CONV[:2], True), (CONV[1:3], False)]:
        ours, _ = encode_chat(chat_tokenizer, conv, add_generation_prompt=gen)
        theirs = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen)
        theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
        assert list(theirs) == ours
        assert hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen) == render_chat(conv, gen)


@pytest.mark.parametrize("bad, needle", [
    ([], "non-empty list"),
    ([{"role": "user"}], "message 0"),
    ([{"role": "tool", "content": "x"}], "unknown role 'tool'"),
    ("hello", "non-empty list"),
])
def test_bad_messages(chat_tokenizer, bad, needle):
    with pytest.raises(ScratchError, match=needle):
        encode_chat(chat_tokenizer, bad)


def test_tokenizer_without_chat_tokens(tmp_path):
    from scratchllm.tokenizer import train_bpe

    tok = train_bpe(["hello world"] * 5, 260, special_tokens=["<|eos|>"])
    with pytest.raises(ScratchError, match="<\\|bos\\|>"):
        encode_chat(tok, CONV)
    tok.save_pretrained(tmp_path)
    assert "chat_template" not in (tmp_path / "tokenizer_config.json").read_text()
