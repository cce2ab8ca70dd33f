"""Decontamination: planted eval items are caught (recall >= 0.99), clean documents never flagged."""

from __future__ import annotations

import json
import random

import pytest

from scratchllm.data.config import DecontamConfig
from scratchllm.corpus.embedded import embedded_documents
from scratchllm.data.decontam import Decontaminator, _strings, eval_sets
from scratchllm.data.dedup import words
from scratchllm.errors import ScratchError


@pytest.fixture(scope="module")
def clean_docs() -> list[str]:
    """Paragraphs of the embedded corpus (Python's docs and source): real text, nothing from the eval sets."""
    docs = [p for d in embedded_documents(["prose", "code"], 400_000) for p in d.text.split("\n\n") if len(p) > 200]
    assert len(docs) > 500
    return docs


def plant(doc: str, item: str, rng: random.Random) -> str:
    """Paste ``item`` into ``doc`` at a random word boundary, as a scraped page quoting a benchmark would."""
    cut = [i for i, c in enumerate(doc) if c == " "]
    at = rng.choice(cut) if cut else len(doc)
    return doc[:at] + " " + item + " " + doc[at:]


def test_planted_eval_items_are_caught_and_clean_documents_are_not(clean_docs):
    cfg = DecontamConfig()
    sets = eval_sets(cfg.tasks)
    assert {"arc", "gsm8k", "hellaswag", "humaneval", "mmlu", "ppl", "safety"} <= set(sets)
    dc = Decontaminator(cfg, sets)
    rng = random.Random(0)
    planted, truth = [], []
    for name, records in sets.items():
        for record in records:
            item = max(_strings(record), key=lambda s: len(words(s)))
            if len(words(item)) < cfg.min_words:  # too short to tell from ordinary text (see decontam.py)
                continue
            planted.append(plant(rng.choice(clean_docs), item, rng))
            truth.append(name)
    assert len(planted) >= 130
    hits = dc(planted)
    recall = sum(name in h for name, h in zip(truth, hits, strict=True)) / len(planted)
    assert recall >= 0.99, [(t, p[:80]) for t, p, h in zip(truth, planted, hits, strict=True) if t not in h][:5]
    flagged = [d[:100] for d, h in zip(clean_docs, dc(clean_docs), strict=True) if h]
    assert flagged == []
    assert dc.stats.contaminated == sum(1 for h in hits if h) and dc.stats.checked == len(planted) + len(clean_docs)


def test_normalisation_and_whole_short_items():
    sets = {"quiz": [{"question": "Which planet in our solar system has the most moons?", "answer": "Saturn"},
                     {"question": "Is water wet?"}]}
    dc = Decontaminator(DecontamConfig(), sets)
    assert dc.too_short == {"quiz": 1}
    text = "Trivia night!  WHICH planet, in our Solar-System, has the most MOONS??? Nobody knew."
    assert dc([text, "Which planet has rings? Saturn.", "is water wet? " * 5]) == [["quiz"], [], []]


def test_user_task_files_and_bad_entries(tmp_path):
    item = "The quick brown fox jumps over the lazy dog while the cat watches from the old wooden fence"
    (tmp_path / "mine.jsonl").write_text(json.dumps({"prompt": item}) + "\n")
    dc = Decontaminator(DecontamConfig(tasks=["mmlu", f"custom={tmp_path / 'mine.jsonl'}"]))
    assert dc.names == ["custom", "mmlu"]
    assert dc(["intro. " + item.upper() + " outro."]) == [["custom"]]
    with pytest.raises(ScratchError, match="not a built-in task"):
        Decontaminator(DecontamConfig(tasks=["nope"]))
