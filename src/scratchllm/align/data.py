"""Preference data: (prompt, chosen, rejected) triples, from JSONL or from checkable instruction tasks.

JSONL, one pair per line::

    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     "chosen": "Hello!", "rejected": ""}      <- rejected: an error naming line 2 (empty response)

``prompt`` is a user message (a string) or a list of chat messages; ``chosen`` and ``rejected`` are
assistant replies. Tokenised in the chat format of ``scratchllm.tokenizer.chat``: the prompt ends with
the generation prompt ``<|assistant|>``, a response is its content plus ``<|end|>``, and only the
response tokens count in log-probabilities and rewards.

``checkable_pairs`` builds real preferences from the embedded instruction tasks, whose answers are
checked programmatically: chosen = a reply that ``is_correct`` accepts, rejected = one it refuses
(the policy's own wrong sample when given one, else another example's answer of the same kind).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text, read_jsonl
from scratchllm.tasks.instruct import is_correct
from scratchllm.tokenizer.chat import END, check_messages, encode_chat


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable messages
    chosen: str
    rejected: str

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.prompt]

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.messages, "chosen": self.chosen, "rejected": self.rejected}


def make_pair(prompt: str | list[dict[str, str]], chosen: str, rejected: str, where: str = "pair") -> PreferencePair:
    """Validate one pair: the bad inputs of preference data get a message naming ``where``."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ScratchError(f"{where}: the prompt is empty", "every pair needs a non-empty prompt")
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = check_messages(prompt, where)
        if messages[-1]["role"] == "assistant":
            raise ScratchError(f"{where}: the prompt ends with an assistant message",
                               "the prompt is the conversation so far; put the replies in 'chosen'/'rejected'")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise ScratchError(f"{where}: '{name}' must be a string, got {type(value).__name__}",
                               "chosen and rejected are the assistant's replies as text")
        if not value.strip():
            raise ScratchError(f"{where}: the {name} response is empty",
                               "drop the pair, or give both responses some text")
    if chosen.strip() == rejected.strip():
        raise ScratchError(f"{where}: chosen and rejected are the same response ({chosen.strip()[:60]!r})",
                           "a preference pair needs two different responses; drop or fix the pair")
    return PreferencePair(tuple((m["role"], m["content"]) for m in messages), chosen, rejected)


def load_preferences(path: str | Path) -> list[PreferencePair]:
    """Read a JSONL file of {"prompt", "chosen", "rejected"}; a bad line raises an error with its number."""
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"preference file not found: {path}", "check data.path (JSONL with prompt/chosen/rejected)")
    pairs: list[PreferencePair] = []
    shape = 'each line looks like {"prompt": ..., "chosen": ..., "rejected": ...}'
    for where, record in read_jsonl(path, shape):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
        if missing:
            raise ScratchError(f"{where}: missing key {missing[0]!r}", shape)
        pairs.append(make_pair(record["prompt"], record["chosen"], record["rejected"], where))
    if not pairs:
        raise ScratchError(f"{path}: no preference pairs", "the file is empty")
    return pairs


def save_preferences(pairs: Sequence[PreferencePair], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs))


# --- checkable preferences ---------------------------------------------------------------------------


def checkable_pairs(
    examples: Sequence[Any],
    seed: int = 0,
    sampler: Callable[[list[Any]], list[str]] | None = None,
) -> list[PreferencePair]:
    """Pairs (prompt, correct reply, wrong reply) from ``InstructExample``s, every label checked by ``is_correct``.

    ``sampler(examples) -> replies`` (the policy, optional) proposes one reply per example; a wrong
    sample becomes the rejected reply (the model's own mistakes are the most useful negatives).
    Otherwise the rejected reply is the answer of another example of the same kind that
    ``is_correct`` refuses. Examples with no wrong reply available are skipped.
    """
    rng = random.Random(seed)
    samples = sampler(list(examples)) if sampler is not None else [None] * len(examples)
    by_kind: dict[str, list[str]] = {}
    for ex in examples:
        by_kind.setdefault(ex.kind, []).append(ex.answer)
    pairs = []
    for ex, sample in zip(examples, samples, strict=True):
        if not is_correct(ex, ex.answer):
            raise ScratchError(f"instruction example {ex.prompt!r}: its own answer {ex.answer!r} is not accepted "
                               "by is_correct", "the example generator and checker disagree: report it as a bug")
        rejected = sample if sample is not None and sample.strip() and not is_correct(ex, sample) else None
        if rejected is None:
            wrong = [a for a in by_kind[ex.kind] if not is_correct(ex, a)]
            if not wrong:
                continue
            rejected = rng.choice(wrong)
        pairs.append(make_pair(ex.prompt, ex.answer, rejected, f"example {ex.kind}"))
    return pairs


# --- tokenisation and batches ------------------------------------------------------------------------


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def encode_response(tokenizer: Any, text: str) -> list[int]:
    """An assistant reply's tokens: its content, then ``<|end|>`` (what the model must learn to emit)."""
    return tokenizer.encode_ordinary(text) + [tokenizer.special_tokens[END]]


def encode_pairs(pairs: Sequence[PreferencePair], tokenizer: Any, context_length: int,
                 what: str = "pair") -> list[EncodedPair]:
    """Tokenise pairs; a prompt that leaves no room for a reply is an error, long replies are cut to fit."""
    out, cut = [], 0
    for i, p in enumerate(pairs):
        prompt_ids, _ = encode_chat(tokenizer, p.messages, add_generation_prompt=True)
        room = context_length - len(prompt_ids)
        if room < 2:
            raise ScratchError(
                f"{what} {i}: the prompt is {len(prompt_ids)} tokens, which leaves no room for a reply in the "
                f"model's context of {context_length} tokens",
                "shorten or drop the prompt, or use a model with a larger context_length",
            )
        chosen, rejected = encode_response(tokenizer, p.chosen), encode_response(tokenizer, p.rejected)
        if len(chosen) > room or len(rejected) > room:
            cut += 1
            chosen, rejected = chosen[:room], rejected[:room]
            if chosen == rejected:
                raise ScratchError(f"{what} {i}: chosen and rejected are identical once cut to the context "
                                   f"({room} reply tokens fit after the prompt)",
                                   "shorten the prompt or drop the pair")
        out.append(EncodedPair(prompt_ids, chosen, rejected))
    if cut:
        print(f"note: {cut} of {len(pairs)} pairs had a reply longer than the context; cut to fit", file=sys.stderr)
    return out


def pad_sequences(prompts: Sequence[list[int]], completions: Sequence[list[int]],
                  pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` = prompt + completion and ``completion_mask`` (1 on completion tokens)."""
    T = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[row, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[row, len(p) : len(p) + len(c)] = 1
    return {"input_ids": ids, "completion_mask": mask}


def collate_pairs(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of B pairs as 2B rows: chosen rows first, then rejected (trl's layout)."""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return pad_sequences(prompts, completions, pad_id)


class ShuffledOrder:
    """Items in a seeded shuffled order, reshuffled every epoch; (epoch, position) is checkpoint state.

    One definition for every align batch source (preference pairs, GRPO/RLOO and PPO prompts)."""

    def __init__(self, items: Sequence[Any], seed: int, what: str) -> None:
        self.items, self.seed, self.what = list(items), seed, what
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[Any]:
        picked = []
        while len(picked) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            picked.append(self.items[self._order[self.pos]])
            self.pos += 1
        return picked

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "n": len(self.items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n") != len(self.items):
            raise ScratchError(f"the checkpoint was trained on {state.get('n')} {self.what}, this run has "
                               f"{len(self.items)}", "resume with the same data settings")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._shuffle()


class PairBatchSource:
    """Shuffled batches of pairs for the Trainer, epoch after epoch; resumable (epoch, position)."""

    def __init__(self, pairs: Sequence[EncodedPair], batch_size: int, pad_id: int, seed: int) -> None:
        if not pairs:
            raise ScratchError("no preference pairs to train on", "check the preference data")
        self.batch_size, self.pad_id = batch_size, pad_id
        self.order = ShuffledOrder(pairs, seed, "preference pairs")

    def next_batch(self) -> dict[str, torch.Tensor]:
        return collate_pairs(self.order.take(self.batch_size), self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


def batches_of(pairs: Sequence[EncodedPair], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Fixed, in-order batches (held-out evaluation)."""
    return [collate_pairs(pairs[i : i + batch_size], pad_id) for i in range(0, len(pairs), batch_size)]
