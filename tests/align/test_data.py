"""Preference data: JSONL loading with line-numbered errors, checkable pairs, tokenisation, batches."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.align.data import (
    PairBatchSource,
    checkable_pairs,
    collate_pairs,
    encode_pairs,
    load_preferences,
    make_pair,
    save_preferences,
)
from scratchllm.errors import ScratchError
from scratchllm.tokenizer.chat import encode_chat
from scratchllm.tasks.instruct import embedded_instructions, is_correct


def write_lines(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_load_round_trip_and_chat_prompts(tmp_path):
    path = write_lines(tmp_path / "p.jsonl",
                       {"prompt": "2+2?", "chosen": "4", "rejected": "5"}, "",
                       {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                        "chosen": "Hello!", "rejected": "Go away."})
    pairs = load_preferences(path)
    assert [p.chosen for p in pairs] == ["4", "Hello!"]
    assert pairs[0].messages == [{"role": "user", "content": "2+2?"}]
    assert pairs[1].messages[0]["role"] == "system"
    save_preferences(pairs, tmp_path / "again.jsonl")
    assert load_preferences(tmp_path / "again.jsonl") == pairs


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "q", "chosen": "same", "rejected": "same"}', "chosen and rejected are the same"),
    ('{"prompt": "q", "chosen": "a", "rejected": "   "}', "rejected response is empty"),
    ('{"prompt": "q", "chosen": "", "rejected": "b"}', "chosen response is empty"),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}', "prompt is empty"),
    ('{"prompt": "q", "chosen": "a"}', "missing key 'rejected'"),
    ('{"prompt": "q", "chosen": 3, "rejected": "b"}', "'chosen' must be a string"),
    ('[1, 2]', "expected a JSON object"),
    ('{"prompt": "q", "chosen": "a", ', "malformed JSON"),
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
     '"chosen": "a", "rejected": "b"}', "ends with an assistant message"),
    ('{"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}', "unknown role"),
])
def test_bad_lines_are_named_by_number(tmp_path, line, message):
    path = write_lines(tmp_path / "p.jsonl", {"prompt": "fine", "chosen": "a", "rejected": "b"}, line)
    with pytest.raises(ScratchError) as e:
        load_preferences(path)
    assert f"{path}:2" in e.value.message and message in e.value.message
    assert e.value.hint


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ScratchError, match="not found"):
        load_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(ScratchError, match="no preference pairs"):
        load_preferences(write_lines(tmp_path / "e.jsonl", ""))


def test_checkable_pairs_are_real_preferences():
    examples = embedded_instructions(40, "train", seed=3, kinds=("add", "reverse"), system_prompt=False)
    pairs = checkable_pairs(examples, seed=0)
    assert len(pairs) == len(examples)
    for ex, p in zip(examples, pairs, strict=True):
        assert p.messages == ex.prompt
        assert is_correct(ex, p.chosen) and not is_correct(ex, p.rejected)


def test_checkable_pairs_take_the_policys_wrong_samples():
    examples = embedded_instructions(6, "train", seed=1, kinds=("add",), system_prompt=False)
    samples = ["nonsense", examples[1].answer, "", "7 apples", "x", "y"]  # right, empty: fall back to others
    pairs = checkable_pairs(examples, sampler=lambda exs: samples[: len(exs)])
    assert pairs[0].rejected == "nonsense" and pairs[3].rejected == "7 apples"
    for i in (1, 2):
        assert pairs[i].rejected in {e.answer for e in examples} and not is_correct(examples[i], pairs[i].rejected)


def test_encoding_follows_the_chat_format(tokenizer):
    pair = make_pair("Reverse: ab", "ba", "ab")
    (enc,) = encode_pairs([pair], tokenizer, 64)
    prompt, _ = encode_chat(tokenizer, pair.messages, add_generation_prompt=True)
    full, mask = encode_chat(tokenizer, [*pair.messages, {"role": "assistant", "content": "ba"}])
    assert enc.prompt_ids == prompt
    assert enc.prompt_ids + enc.chosen_ids == full  # the SFT model saw exactly these tokens
    assert [m for m in mask[len(prompt):]] == [1] * len(enc.chosen_ids)


def test_prompt_longer_than_the_context_is_an_error(tokenizer):
    with pytest.raises(ScratchError, match="pair 1: the prompt is .* no room for a reply") as e:
        encode_pairs([make_pair("short", "a", "b"), make_pair("x" * 80, "a", "b")], tokenizer, 64)
    assert "context_length" in e.value.hint


def test_long_replies_are_cut_and_identical_cuts_refused(tokenizer, capsys):
    (enc,) = encode_pairs([make_pair("q", "a" * 100, "b" * 100)], tokenizer, 32)
    assert len(enc.prompt_ids) + len(enc.chosen_ids) == 32 and "cut to fit" in capsys.readouterr().err
    with pytest.raises(ScratchError, match="identical once cut"):
        encode_pairs([make_pair("q", "a" * 100 + "x", "a" * 100 + "y")], tokenizer, 32)


def test_collate_layout(tokenizer):
    encoded = encode_pairs([make_pair("q1", "yes", "no"), make_pair("longer prompt", "a", "bbbb")], tokenizer, 64)
    batch = collate_pairs(encoded, tokenizer.pad_id)
    ids, mask = batch["input_ids"], batch["completion_mask"]
    assert ids.shape[0] == 4  # chosen rows, then rejected rows
    for row, (e, reply) in enumerate([(encoded[0], "chosen_ids"), (encoded[1], "chosen_ids"),
                                      (encoded[0], "rejected_ids"), (encoded[1], "rejected_ids")]):
        seq = e.prompt_ids + getattr(e, reply)
        assert ids[row, : len(seq)].tolist() == seq
        assert (ids[row, len(seq):] == tokenizer.pad_id).all()
        assert mask[row].tolist() == [0] * len(e.prompt_ids) + [1] * len(getattr(e, reply)) + [0] * (
            ids.shape[1] - len(seq))


def test_batch_source_resumes_exactly(tokenizer):
    encoded = encode_pairs([make_pair(f"q{i}", "a", f"b{i}") for i in range(7)], tokenizer, 64)
    src = PairBatchSource(encoded, 3, tokenizer.pad_id, seed=5)
    for _ in range(4):
        src.next_batch()
    state = src.state_dict()
    expected = [src.next_batch()["input_ids"] for _ in range(3)]
    other = PairBatchSource(encoded, 3, tokenizer.pad_id, seed=5)
    other.load_state_dict(state)
    assert all(torch.equal(a, other.next_batch()["input_ids"]) for a in expected)
    with pytest.raises(ScratchError, match="trained on 7 preference pairs, this run has 6"):
        PairBatchSource(encoded[:6], 3, tokenizer.pad_id, seed=5).load_state_dict(state)


def test_preferences_as_a_json_array(tmp_path):
    pairs = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(4)]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(pairs, indent=1))
    loaded = load_preferences(path)
    assert len(loaded) == 4 and loaded[3].prompt == (("user", "q3"),) and loaded[3].chosen == "a"
    path.write_text(json.dumps([*pairs, {"prompt": "q", "chosen": "a"}]))
    with pytest.raises(ScratchError, match=r"prefs.json\[4\]: missing key 'rejected'"):
        load_preferences(path)
