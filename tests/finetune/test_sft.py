from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.tokenizer.chat import encode_chat
from scratchllm.finetune.sft import (
    SFTBatchSource,
    collate,
    encode_conversations,
    fixed_sft_batches,
    greedy_replies,
    mean_loss,
    sft_loss,
)
from scratchllm.model.model import IGNORE_INDEX, ModelConfig, Transformer


def conv(system: str, user: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user},
            {"role": "assistant", "content": reply}]


@pytest.fixture(scope="module")
def model(chat_tokenizer):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=chat_tokenizer.vocab_size, context_length=96, d_model=32,
                                   n_layers=2, n_heads=4, d_ff=64)).eval()


def test_targets_are_assistant_tokens_only(chat_tokenizer):
    tok = chat_tokenizer
    a = conv("Be brief.", "Spell cat backwards.", "tac")
    b = conv("Hi", "What is 3 + 4?", "7, of course")
    x, y = collate(encode_conversations(tok, [a, b], 96), tok.pad_id)
    for row, c in enumerate([a, b]):
        ids, mask = encode_chat(tok, c)
        n = len(ids) - 1
        assert x[row, :n].tolist() == ids[:-1] and (x[row, n:] == tok.pad_id).all()
        kept = y[row][y[row] != IGNORE_INDEX].tolist()
        assert tok.decode(kept) == c[-1]["content"] + "<|end|>"


def test_changing_user_and_system_tokens_changes_no_loss_term(chat_tokenizer, model):
    """Replace every system/user content token by a random one, keep the inputs x fixed: the targets,
    every loss term and the loss are identical. Changing the assistant reply does change them."""
    tok = chat_tokenizer
    a = conv("You are a helpful assistant.", "Reverse the word: apple", "elppa")
    ids, mask = encode_chat(tok, a)
    specials = set(tok.special_tokens.values())
    g = torch.Generator().manual_seed(3)
    swapped = [i if (m or i in specials) else int(torch.randint(256, (1,), generator=g)) for i, m in zip(ids, mask)]
    changed = sum(i != j for i, j in zip(ids, swapped))
    assert changed > 10  # the system and user contents really changed
    x_a, y_a = collate([(ids, mask)], tok.pad_id)
    x_b, y_b = collate([(swapped, mask)], tok.pad_id)
    assert not torch.equal(x_a, x_b) and torch.equal(y_a, y_b)  # the differing tokens are all ignored targets
    logits = model(x_a)
    terms = lambda y: torch.nn.functional.cross_entropy(logits[0], y[0], reduction="none")  # noqa: E731
    assert torch.equal(terms(y_a), terms(y_b))
    assert torch.equal(sft_loss(model, (x_a, y_a))[0], sft_loss(model, (x_a, y_b))[0])
    _, y_c = collate([encode_chat(tok, conv(a[0]["content"], a[1]["content"], "apple"))], tok.pad_id)
    assert not torch.equal(sft_loss(model, (x_a, y_a))[0], sft_loss(model, (x_a, y_c))[0])


def test_gradient_reaches_logits_only_at_assistant_targets(chat_tokenizer, model):
    tok = chat_tokenizer
    x, y = collate(encode_conversations(tok, [conv("s", "What is 2 + 2?", "4"), conv("t", "u", "longer reply")], 96),
                   tok.pad_id)
    captured = {}

    def keep(module, inputs, out):
        out.retain_grad()
        captured["out"] = out

    handle = model.lm_head.register_forward_hook(keep)
    try:
        loss, metrics = sft_loss(model, (x, y))
        loss.backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    grad_rows = captured["out"].grad.abs().sum(-1) > 0
    assert torch.equal(grad_rows, y != IGNORE_INDEX)
    assert metrics["assistant_tokens"] == float((y != IGNORE_INDEX).sum())


def test_padding_does_not_change_losses(chat_tokenizer, model):
    tok = chat_tokenizer
    examples = encode_conversations(tok, [conv("a", "b", "short"), conv("system prompt", "a longer question here",
                                                                         "and a longer answer too")], 96)
    together = mean_loss(model, [collate(examples, tok.pad_id)], torch.device("cpu"))
    alone = [mean_loss(model, [collate([e], tok.pad_id)], torch.device("cpu")) for e in examples]
    counts = [sum(m[1:]) for _, m in examples]
    assert together == pytest.approx(sum(l * c for l, c in zip(alone, counts)) / sum(counts), rel=1e-5)
    assert len(fixed_sft_batches(examples * 3, 4, tok.pad_id)) == 2


def test_overflow_policies(chat_tokenizer):
    tok = chat_tokenizer
    long = conv("s", "word " * 200, "ok")
    short = conv("s", "hi", "hello")
    with pytest.raises(ScratchError, match="conversation 1 is .* tokens, longer than the maximum of 40"):
        encode_conversations(tok, [short, long], 40)
    assert len(encode_conversations(tok, [short, long], 40, "skip")) == 1
    # truncation cuts the reply off: nothing left to learn, so that conversation is dropped
    assert len(encode_conversations(tok, [short, long], 40, "truncate")) == 1
    reply_long = conv("s", "hi", "answer " * 50)
    (ids, mask), = encode_conversations(tok, [reply_long], 40, "truncate")
    assert len(ids) == 40 and sum(mask) > 0
    with pytest.raises(ScratchError, match="no conversation fits"):
        encode_conversations(tok, [long], 40, "skip")


def test_batch_source_resumes_exactly(chat_tokenizer):
    tok = chat_tokenizer
    examples = encode_conversations(tok, [conv("s", f"q{i}", f"a{i}") for i in range(7)], 96)
    src = SFTBatchSource(examples, 3, tok.pad_id, seed=1)
    for _ in range(4):
        src.next_batch()  # crosses an epoch boundary
    state = src.state_dict()
    expected = [src.next_batch() for _ in range(3)]
    again = SFTBatchSource(examples, 3, tok.pad_id, seed=1)
    again.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, [again.next_batch() for _ in range(3)], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ScratchError, match="resume with the same data"):
        SFTBatchSource(examples[:5], 3, tok.pad_id, seed=1).load_state_dict(state)


def test_greedy_batched_equals_one_by_one(chat_tokenizer, model):
    prompts = [conv("s", "What is 1 + 1?", "")[:2], conv("a much longer system prompt", "hi", "")[:2]]
    both = greedy_replies(model, chat_tokenizer, prompts, 6, torch.device("cpu"))
    single = [greedy_replies(model, chat_tokenizer, [p], 6, torch.device("cpu"))[0] for p in prompts]
    assert both == single
