from __future__ import annotations

from collections import Counter

import pytest

from scratchllm.errors import ScratchError
from scratchllm.tasks.instruct import KINDS, embedded_instructions, is_correct, split_of


def _questions(examples):
    return {e.prompt[-1]["content"] for e in examples}


def test_deterministic_disjoint_and_checkable():
    a = embedded_instructions(160, "train", seed=3)
    assert a == embedded_instructions(160, "train", seed=3)
    assert a != embedded_instructions(160, "train", seed=4)
    held = embedded_instructions(80, "heldout", seed=3) + embedded_instructions(80, "heldout", seed=4)
    assert not _questions(a) & _questions(held)
    assert all(split_of(q) == "heldout" for q in _questions(held))
    assert Counter(e.kind for e in a) == {k: 20 for k in KINDS}
    for e in a:
        assert e.messages[-1] == {"role": "assistant", "content": e.answer}
        assert e.prompt[-1]["role"] == "user"
        assert is_correct(e, e.answer) and is_correct(e, f" {e.answer}.<|end|>")
        assert not is_correct(e, e.answer + "0") and not is_correct(e, "")


def test_answers_are_right():
    for e in embedded_instructions(80, "train", seed=1):
        q = e.prompt[-1]["content"]
        if e.kind in ("add", "sub", "mul"):
            expr = q.removeprefix("What is ").removesuffix("?")
            assert str(eval(expr)) == e.answer  # noqa: S307 - our own generated arithmetic
        elif e.kind == "reverse":
            assert q.split(": ")[1][::-1] == e.answer
        elif e.kind == "upper":
            assert q.split(": ")[1].upper() == e.answer
        elif e.kind == "corpus_qa":
            passage = q.split("\n")[0].removeprefix("Passage: ").rstrip(".").split()
            word = q.split('"')[1]
            assert passage[passage.index(word) + 1] == e.answer


def test_bad_arguments():
    with pytest.raises(ScratchError, match="unknown split"):
        embedded_instructions(3, "test")
    with pytest.raises(ScratchError, match="unknown instruction kind"):
        embedded_instructions(3, kinds=("poetry",))
