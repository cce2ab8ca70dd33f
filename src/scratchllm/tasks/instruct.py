"""Instruction data: an embedded, code-generated set of checkable tasks, and user JSONL chat files.

Embedded tasks (``kind``): ``add``, ``sub``, ``mul`` (small integers), ``reverse``, ``upper``,
``count`` (letter count), ``length`` (word length), ``corpus_qa`` (which word follows a given word
in a sentence from the embedded corpus). Every example has one exact ``answer``, so
``is_correct(example, response)`` checks a model's reply programmatically (alignment builds
preference pairs from it). Generation is deterministic by seed; the train/held-out split is a
hash of the prompt, so the two splits never share a prompt whatever the seeds.

Used by fine-tuning (training and held-out accuracy), alignment (rewards, preference pairs) and the
pipeline; it sits below all of them. User chat files are read by ``finetune/chat_files.py``.
"""

from __future__ import annotations

import functools
import random
import re
import zlib
from dataclasses import dataclass, field

from scratchllm.errors import ScratchError
from scratchllm.tokenizer.chat import END

KINDS = ("add", "sub", "mul", "reverse", "upper", "count", "length", "corpus_qa")
SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 20

_WORDS = (
    "apple banana cherry dragon eagle forest garden harbor island jungle kettle lemon mango needle "
    "orange pepper quartz river silver tiger umbrella violet window yellow zebra anchor bridge candle "
    "desert engine falcon guitar hammer igloo jacket kitten ladder magnet nickel oyster parrot rabbit "
    "saddle tunnel velvet walnut"
).split()
_SYSTEM = "You are a helpful assistant. Answer with the answer only."


@dataclass(frozen=True)
class InstructExample:
    """A conversation ending in the assistant's reference answer, plus that answer and the task kind."""

    messages: list[dict[str, str]] = field(hash=False)
    answer: str
    kind: str

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The messages before the final assistant turn (what a model is asked to continue)."""
        return self.messages[:-1]


def normalize_answer(text: str) -> str:
    """Whitespace-trimmed, trailing ``<|end|>`` and final period removed; case is kept (``upper`` needs it)."""
    text = text.strip()
    if text.endswith(END):
        text = text[: -len(END)].strip()
    return text[:-1].strip() if text.endswith(".") else text


def is_correct(example: InstructExample, response: str) -> bool:
    """True when ``response`` is exactly the example's answer (after ``normalize_answer``)."""
    return normalize_answer(response) == normalize_answer(example.answer)


@functools.cache
def _corpus_sentences() -> tuple[str, ...]:
    """Short plain sentences from the embedded prose's Python reference topics (``pydoc_data``, the
    first part of ``corpus.embedded.prose_documents``; read directly, without scanning the stdlib)."""
    from pydoc_data import topics

    sentences = []
    for name in sorted(topics.topics):
        for s in re.split(r"(?<=[.!?])\s+", " ".join(topics.topics[name].split())):
            words = [w.rstrip(",;:") for w in s.rstrip(".!?").split()]
            if 6 <= len(words) <= 16 and all(re.fullmatch(r"[A-Za-z][a-z]*", w) for w in words):
                sentences.append(" ".join(words))
    return tuple(dict.fromkeys(sentences))


def _make(kind: str, rng: random.Random) -> tuple[str, str]:
    """One (question, answer) of ``kind``."""
    if kind in ("add", "sub", "mul"):
        hi = 12 if kind == "mul" else 50
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        if kind == "sub":
            a, b = max(a, b), min(a, b)
        op, value = {"add": ("+", a + b), "sub": ("-", a - b), "mul": ("*", a * b)}[kind]
        return f"What is {a} {op} {b}?", str(value)
    word = rng.choice(_WORDS)
    if kind == "reverse":
        return f"Reverse the word: {word}", word[::-1]
    if kind == "upper":
        words = " ".join(rng.sample(_WORDS, rng.randint(1, 3)))
        return f"Write in uppercase: {words}", words.upper()
    if kind == "count":
        letter = rng.choice(sorted(set(word)))
        return f"How many times does the letter {letter} appear in {word}?", str(word.count(letter))
    if kind == "length":
        return f"How many letters are in the word {word}?", str(len(word))
    if kind == "corpus_qa":
        words = rng.choice(_corpus_sentences()).split()
        unique = [i for i, w in enumerate(words[:-1]) if words.count(w) == 1]
        i = rng.choice(unique) if unique else 0
        sentence = " ".join(words)
        return f"Passage: {sentence}.\nWhich word comes right after \"{words[i]}\" in the passage?", words[i + 1]
    raise ScratchError(f"unknown instruction kind {kind!r}", f"choose from {', '.join(KINDS)}")


def split_of(question: str) -> str:
    """Which split a prompt belongs to: a stable hash, so splits are disjoint for every seed."""
    return "heldout" if zlib.crc32(question.encode("utf-8")) % 100 < HELDOUT_PERCENT else "train"


def embedded_instructions(
    n: int, split: str = "train", seed: int = 0, kinds: tuple[str, ...] = KINDS, system_prompt: bool = True
) -> list[InstructExample]:
    """``n`` generated examples of ``split`` ("train" or "heldout"), cycling through ``kinds``; deterministic."""
    if split not in SPLITS:
        raise ScratchError(f"unknown split {split!r}", f"choose from {', '.join(SPLITS)}")
    for k in kinds:
        if k not in KINDS:
            raise ScratchError(f"unknown instruction kind {k!r}", f"choose from {', '.join(KINDS)}")
    rng = random.Random(f"{seed}:{split}")
    out: list[InstructExample] = []
    tries = 0
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        question, answer = _make(kind, rng)
        tries += 1
        if tries > 200 * (n + 10):
            raise ScratchError(f"could not generate {n} {split} examples of kinds {kinds}",
                               "ask for fewer examples or more kinds")
        if split_of(question) != split:
            continue
        messages = [{"role": "system", "content": _SYSTEM}] if system_prompt else []
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append(InstructExample(messages, answer, kind))
    return out
