"""Instruction data: an embedded, code-generated set of checkable tasks, and user JSONL chat files.

Embedded tasks (``kind``): ``add``, ``sub``, ``mul`` (small integers), ``reverse``, ``upper``,
``count`` (letter count), ``length`` (word length), ``corpus_qa`` (which word follows a given word
in a sentence from the embedded corpus). Every example has one exact ``answer``, so
``is_correct(example, response)`` checks a model's reply programmatically (alignment builds
preference pairs from it). Generation is deterministic by seed; the train/held-out split is a
hash of the prompt, so the two splits never share a prompt whatever the seeds.

User files: JSONL, one conversation per line, in the common formats
``{"messages": [{"role", "content"}, ...]}`` (OpenAI/HF), ``{"conversations": [{"from", "value"}]}``
(ShareGPT) and ``{"instruction", "input", "output"}`` (Alpaca). Bad lines are reported with their
line number and either skipped or fatal.
"""

from __future__ import annotations

import functools
import json
import random
import re
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ScratchError
from scratchllm.tokenizer.chat import END, check_messages
from scratchllm.io import iter_json_array, read_text

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
    first part of ``data.corpus.prose_documents``; read directly, without scanning the stdlib)."""
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


# ------------------------------------------------------------------------------------- user JSONL
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "bot": "assistant"}


def record_to_messages(record: Any, where: str = "record") -> list[dict[str, str]]:
    """Convert one JSON record in a supported chat format to a validated messages list."""
    if not isinstance(record, dict):
        raise ScratchError(f"{where}: expected a JSON object, got {type(record).__name__}",
                           "each line must be one JSON object")
    if "messages" in record:
        messages = check_messages(record["messages"], where)
    elif "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise ScratchError(f"{where}: 'conversations' must be a list of {{'from', 'value'}} objects",
                               'ShareGPT turns look like {"from": "human", "value": "..."}')
        try:
            messages = [{"role": _SHAREGPT_ROLES[t.get("from")], "content": t.get("value")} for t in turns]
        except KeyError:
            bad = next(t.get("from") for t in turns if t.get("from") not in _SHAREGPT_ROLES)
            raise ScratchError(f"{where}: unknown ShareGPT speaker {bad!r}",
                               f"use one of {', '.join(_SHAREGPT_ROLES)}") from None
        messages = check_messages(messages, where)
    elif "instruction" in record and "output" in record:
        parts = [record["instruction"], record.get("input") or ""]
        if not all(isinstance(p, str) for p in [*parts, record["output"]]):
            raise ScratchError(f"{where}: 'instruction', 'input' and 'output' must be strings",
                               "fix the record's field types")
        user = "\n\n".join(p for p in parts if p.strip())
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        if isinstance(record.get("system"), str) and record["system"]:
            messages.insert(0, {"role": "system", "content": record["system"]})
    else:
        raise ScratchError(f"{where}: unrecognised chat format (keys: {', '.join(sorted(record)) or 'none'})",
                           "use 'messages' (list of role/content), 'conversations' (ShareGPT) "
                           "or 'instruction'/'input'/'output' (Alpaca)")
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise ScratchError(f"{where}: conversation has no (non-empty) assistant turn, so nothing to learn",
                           "add the assistant's reply or drop the line")
    return messages


def _starts_with_array(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4096).lstrip().startswith(b"[")


def _json_line(raw: bytes, where: str) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScratchError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})",
                           "re-encode the file as UTF-8, or set data.skip_bad=true") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ScratchError(f"{where}: malformed JSON ({e.msg} at column {e.colno})",
                           "fix the line, or set data.skip_bad=true to skip bad lines") from None


def load_chat_jsonl(
    path: str | Path, skip_bad: bool = False, report: Callable[[str], None] | None = None
) -> list[list[dict[str, str]]]:
    """Read a chat file: JSONL, or one JSON array of conversations (a ``.json`` file). Bad lines (items)
    raise ScratchError naming the line, or with ``skip_bad`` are reported (``report``, default stderr) and
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"instruction file not found: {path}", "check the path in finetune.data.path")
    report = report or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    out: list[list[dict[str, str]]] = []
    skipped = 0

    def keep(where: str, messages: Callable[[], list[dict[str, str]]]) -> None:
        nonlocal skipped
        try:
            out.append(messages())
        except ScratchError as e:
            if not skip_bad:
                raise
            skipped += 1
            report(f"skipping {e.message}")

    if _starts_with_array(path):
        # One JSON array of conversations (ShareGPT as usually distributed, in a .json file).
        for where, record in iter_json_array(read_text(path), path, "each item is one conversation object"):
            keep(where, lambda r=record, w=where: record_to_messages(r, w))
    else:
        with path.open("rb") as f:  # bytes, decoded line by line: a bad byte is reported at its own line
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():
                    where = f"{path}:{lineno}"
                    keep(where, lambda r=raw, w=where: record_to_messages(_json_line(r, w), w))
    if skipped:
        report(f"{path}: skipped {skipped} bad line(s), kept {len(out)}")
    if not out:
        raise ScratchError(f"{path}: no usable conversations", "check the file's format (see docs/finetune.md)")
    return out
