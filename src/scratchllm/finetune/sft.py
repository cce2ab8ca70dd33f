"""Supervised fine-tuning data for the one training loop: encoded chats, padded batches, evaluation.

Each conversation becomes ``(ids, loss_mask)`` (``chat.encode_chat``). A batch is right-padded to
its longest row: ``x = ids[:-1]``, ``y = ids[1:]`` with ``y = -100`` (ignored) wherever the target
token is not an assistant token, and on padding. Causal attention means right padding never
changes the real tokens' outputs, so the plain ``lm_loss`` of the Trainer is exactly the mean
cross-entropy over assistant tokens. Padding (not packing) keeps examples from attending to each
other without a block-diagonal mask.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from scratchllm.errors import ScratchError
from scratchllm.infer.engine import Engine
from scratchllm.infer.sampling import SamplingParams
from scratchllm.model.model import IGNORE_INDEX
from scratchllm.tasks.instruct import InstructExample, is_correct
from scratchllm.tokenizer.chat import END, encode_chat

Encoded = tuple[list[int], list[int]]
Overflow = Literal["error", "truncate", "skip"]


def encode_conversations(
    tokenizer: Any, conversations: Sequence[list[dict[str, str]]], max_len: int, overflow: Overflow = "error"
) -> list[Encoded]:
    """Encode chats for training; conversations longer than ``max_len`` tokens raise, are truncated or skipped."""
    out: list[Encoded] = []
    for i, messages in enumerate(conversations):
        ids, mask = encode_chat(tokenizer, messages)
        if len(ids) > max_len:
            if overflow == "error":
                raise ScratchError(
                    f"conversation {i} is {len(ids)} tokens, longer than the maximum of {max_len} "
                    "(data.max_len, at most the model's context_length)",
                    "shorten it, raise data.max_len, or set data.overflow=\"truncate\" or \"skip\"")
            if overflow == "skip":
                continue
            ids, mask = ids[:max_len], mask[:max_len]
        if sum(mask[1:]) == 0:  # e.g. truncation cut off every assistant token
            if overflow == "error":
                raise ScratchError(f"conversation {i} has no assistant tokens to learn from",
                                   "every conversation needs a non-empty assistant reply")
            continue
        out.append((ids, mask))
    if not out:
        raise ScratchError(f"no conversation fits in {max_len} tokens", "raise data.max_len or use shorter chats")
    return out


def collate(examples: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (x, y): y is x shifted by one, -100 where the target is not an assistant token."""
    width = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[row, :n] = torch.tensor(ids[:-1])
        target = torch.tensor(ids[1:])
        y[row, :n] = torch.where(torch.tensor(mask[1:], dtype=torch.bool), target, IGNORE_INDEX)
    return x, y


class SFTBatchSource:
    """Shuffled epochs over the encoded examples; resumable (epoch and position in its permutation)."""

    def __init__(self, examples: Sequence[Encoded], batch_size: int, pad_id: int, seed: int) -> None:
        self.examples, self.batch_size, self.pad_id, self.seed = list(examples), batch_size, pad_id, seed
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        while len(rows) < self.batch_size:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            rows.append(self.examples[self._order[self.pos]])
            self.pos += 1
        return collate(rows, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "n": len(self.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n") != len(self.examples):
            raise ScratchError(f"the checkpoint was trained on {state.get('n')} examples, this run has "
                               f"{len(self.examples)}", "resume with the same data settings")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation()


def fixed_sft_batches(examples: Sequence[Encoded], batch_size: int, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All examples in order, as batches (for held-out losses)."""
    return [collate(examples[i : i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]


def sft_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over assistant tokens (-100 elsewhere); also reports how many there were."""
    x, y = batch
    _, loss = model(x, targets=y)
    return loss, {"assistant_tokens": float((y != IGNORE_INDEX).sum())}


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    """Token-weighted mean assistant-token loss over ``batches``."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        n = int((y != IGNORE_INDEX).sum())
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX,
                                           reduction="sum")
        total, count = total + float(loss), count + n
    return total / max(count, 1)


@torch.no_grad()
def greedy_replies(model: nn.Module, tokenizer: Any, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int,
                   device: torch.device, batch_size: int = 32) -> list[str]:
    """Greedy assistant replies to each prompt (stopping at ``<|end|>``), on the continuous-batching engine
    (scratchllm.infer; batch_size sequences at once). device: where the model is (the engine uses its device)."""
    if not prompts:
        return []
    end = tokenizer.special_tokens[END]
    ctx = model.cfg.context_length
    encoded = [encode_chat(tokenizer, p, add_generation_prompt=True)[0][-(ctx - max_new_tokens):] for p in prompts]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, stop_token_ids=[end])
    engine = Engine(model, max_slots=min(batch_size, len(encoded)),
                    max_len=max(len(ids) for ids in encoded) + max_new_tokens)
    done = engine.generate(encoded, params)
    return [tokenizer.decode([t for t in c.tokens if t != end]) for c in done]


def accuracy(model: nn.Module, tokenizer: Any, examples: Sequence[InstructExample], device: torch.device,
             max_new_tokens: int = 16) -> tuple[float, dict[str, float]]:
    """Exact-answer accuracy of greedy replies on checkable examples: (overall, per kind)."""
    replies = greedy_replies(model, tokenizer, [e.prompt for e in examples], max_new_tokens, device)
    right: dict[str, list[bool]] = {}
    for e, r in zip(examples, replies, strict=True):
        right.setdefault(e.kind, []).append(is_correct(e, r))
    flat = [ok for oks in right.values() for ok in oks]
    return sum(flat) / max(len(flat), 1), {k: sum(v) / len(v) for k, v in sorted(right.items())}
