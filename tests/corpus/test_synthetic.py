from __future__ import annotations

import re

from scratchllm.corpus.synthetic import GENERATORS, synthetic_documents


def test_deterministic_and_distinct():
    a = list(synthetic_documents(list(GENERATORS), 40, seed=5))
    b = list(synthetic_documents(list(GENERATORS), 40, seed=5))
    c = list(synthetic_documents(list(GENERATORS), 40, seed=6))
    assert a == b and a != c
    assert len({d.text for d in a}) == 40
    assert {d.source.split(":")[1].split("#")[0] for d in a} == set(GENERATORS)


def test_generated_answers_are_correct():
    docs = list(synthetic_documents(["arithmetic", "tasks", "code"], 60, seed=1))
    text = "\n".join(d.text for d in docs)
    for a, op, b, r in re.findall(r"Answer: (\d+) ([-+*]) (\d+) = (-?\d+)\.", text):
        assert eval(f"{a}{op}{b}") == int(r)  # noqa: S307 - our own generated digits
    for xs, ys in re.findall(r"Sort the numbers ([\d, ]+)\.\nSorted: ([\d, ]+)\.", text):
        assert sorted(map(int, xs.split(", "))) == list(map(int, ys.split(", ")))
    for n, d, q, r in re.findall(r"Answer: (\d+) = (\d+) \* (\d+) \+ (\d+)", text):
        assert int(n) == int(d) * int(q) + int(r) and int(r) < int(d)
    for d in docs:
        if "code" in d.source:
            exec(compile(d.text, d.source, "exec"), {})  # valid Python whose asserts hold
