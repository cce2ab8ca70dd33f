"""Constitutional AI data (Bai et al., 2022): critique -> revise with written principles, then preference pairs.

For each prompt the model answers; then, for ``rounds`` rounds, one principle of the constitution is
applied: the model is asked to critique its last answer against the principle, then to rewrite the
answer given that critique. The pair (prompt, chosen = the final revision, rejected = the first answer)
goes to a JSONL file that ``scratchllm align dpo`` (data.source = "jsonl") or ``align reward`` read.

The model is either ours in-process (``LocalChat``, with the KV-cache generator) or any
OpenAI-compatible chat endpoint (``OpenAIChat``: a hosted API, vLLM, or ``scratchllm serve``).
The constitution is a TOML file (configs/align/constitution.toml)::

    [[principles]]
    name = "harmless"
    critique = "Identify specific ways in which the last response is harmful, unethical or dangerous."
    revision = "Rewrite the response to remove all harmful, unethical or dangerous content."

    prompts = ["How do I pick a lock?", ...]     # default prompts when the config names no file
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from scratchllm.align.data import PreferencePair, make_pair, save_preferences
from scratchllm.align.grpo import prompt_ids, reply_text, respond
from scratchllm.align.run import load_model, load_tokenizer
from scratchllm.client import ChatClient
from scratchllm.config import read_toml
from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text, read_jsonl
from scratchllm.stage import StageResult

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # the critique request
    revision: str  # the revision request


@dataclass
class Constitution:
    principles: list[Principle]
    prompts: list[str]


def load_constitution(path: str | Path) -> Constitution:
    data = read_toml(path)
    raw = data.get("principles")
    if not isinstance(raw, list) or not raw:
        raise ScratchError(f"{path}: no [[principles]] tables", "write at least one principle with critique and revision")
    principles = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise ScratchError(f"{path}: principle {i} is not a table")
        missing = [k for k in ("name", "critique", "revision") if not isinstance(p.get(k), str) or not p[k].strip()]
        if missing:
            raise ScratchError(f"{path}: principle {i} ({p.get('name', '?')}) has no {missing[0]!r} text",
                               "each principle needs name, critique and revision strings")
        unknown = sorted(set(p) - {"name", "critique", "revision"})
        if unknown:
            raise ScratchError(f"{path}: principle {i} has unknown key {unknown[0]!r}",
                               "valid keys: name, critique, revision")
        principles.append(Principle(p["name"], p["critique"], p["revision"]))
    prompts = data.get("prompts", [])
    if not isinstance(prompts, list) or not all(isinstance(x, str) and x.strip() for x in prompts):
        raise ScratchError(f"{path}: 'prompts' must be a list of non-empty strings")
    return Constitution(principles, prompts)


def load_prompts(path: str | Path) -> list[str]:
    """User prompts from JSONL: {"prompt": "..."} per line (a chat file's first user turn also works)."""
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"prompt file not found: {path}", "check constitutional.prompts")
    out = []
    for where, record in read_jsonl(path, 'write {"prompt": "..."} per line'):
        prompt = record.get("prompt")
        if prompt is None and isinstance(record.get("messages"), list):
            prompt = next((m.get("content") for m in record["messages"] if m.get("role") == "user"), None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ScratchError(f"{where}: no non-empty 'prompt' string", 'write {"prompt": "..."}')
        out.append(prompt)
    if not out:
        raise ScratchError(f"{path}: no prompts", "the file is empty")
    return out


# --- chat backends -------------------------------------------------------------------------------------


class Chat(Protocol):
    def chat_many(self, conversations: Sequence[Messages]) -> list[str]: ...


class LocalChat:
    """Our model in-process: chat-format prompts, batched KV-cache generation."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 64, temperature: float = 0.7,
                 seed: int = 0) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.calls = 0

    def chat_many(self, conversations: Sequence[Messages]) -> list[str]:
        prompts = prompt_ids(self.tokenizer, conversations)
        ctx = self.model.cfg.context_length
        for conv, p in zip(conversations, prompts, strict=True):
            if len(p) >= ctx:
                raise ScratchError(
                    f"a critique/revision conversation is {len(p)} tokens, more than the model's context of {ctx} "
                    f"(prompt: {conv[0]['content'][:60]!r})",
                    "lower constitutional.max_new_tokens or rounds, shorten the prompts, or use a larger model "
                    "(or an endpoint: constitutional.backend=openai)",
                )
        self.calls += 1
        replies = respond(self.model, self.tokenizer, prompts, self.max_new_tokens, self.temperature,
                          seed=self.seed + 7919 * self.calls)
        return [reply_text(self.tokenizer, r).strip() for r in replies]


class OpenAIChat:
    """Any OpenAI-compatible chat-completions endpoint, through the project's chat client
    (``scratchllm.client.ChatClient``: retries with backoff, errors that name the setting to fix)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_new_tokens: int = 256,
                 temperature: float = 0.7, timeout: float = 60.0, max_retries: int = 2) -> None:
        self.client = ChatClient(base_url, model, api_key, timeout=timeout, max_retries=max_retries,
                                 role="chat endpoint", url_setting="constitutional.base_url",
                                 key_setting="constitutional.model / constitutional.api_key_env")
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def chat_many(self, conversations: Sequence[Messages]) -> list[str]:
        return [self.client.chat(c, temperature=self.temperature, max_tokens=self.max_new_tokens).strip()
                for c in conversations]


# --- the critique -> revise loop -----------------------------------------------------------------------


@dataclass
class Trace:
    prompt: str
    initial: str
    steps: list[dict[str, str]]  # principle, critique, revision per round

    @property
    def final(self) -> str:
        return self.steps[-1]["revision"] if self.steps else self.initial


def critique_and_revise(chat: Chat, prompts: Sequence[str], constitution: Constitution, rounds: int = 1,
                        seed: int = 0) -> list[Trace]:
    """Answer every prompt, then ``rounds`` times critique and revise it under a randomly drawn principle.

    All prompts advance together, so a local model answers them as one batch per turn.
    """
    rng = random.Random(seed)
    conversations: list[Messages] = [[{"role": "user", "content": p}] for p in prompts]
    initial = chat.chat_many(conversations)
    traces = [Trace(p, a, []) for p, a in zip(prompts, initial, strict=True)]
    answers = list(initial)
    for _ in tqdm(range(rounds), desc="critique/revise", unit="round", disable=rounds < 2):
        picked = [rng.choice(constitution.principles) for _ in prompts]
        base = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                for p, a in zip(prompts, answers, strict=True)]
        critique_convs = [b + [{"role": "user", "content": pr.critique}] for b, pr in zip(base, picked, strict=True)]
        critiques = chat.chat_many(critique_convs)
        revise_convs = [c + [{"role": "assistant", "content": crit}, {"role": "user", "content": pr.revision}]
                        for c, crit, pr in zip(critique_convs, critiques, picked, strict=True)]
        answers = chat.chat_many(revise_convs)
        for t, pr, crit, rev in zip(traces, picked, critiques, answers, strict=True):
            t.steps.append({"principle": pr.name, "critique": crit, "revision": rev})
    return traces


def traces_to_pairs(traces: Sequence[Trace]) -> tuple[list[PreferencePair], int]:
    """(prompt, chosen = final revision, rejected = first answer); traces whose revision is empty or
    unchanged are dropped (no preference to learn). Returns the pairs and the number dropped."""
    pairs, dropped = [], 0
    for t in traces:
        if not t.final.strip() or not t.initial.strip() or t.final.strip() == t.initial.strip():
            dropped += 1
            continue
        pairs.append(make_pair(t.prompt, t.final, t.initial, f"prompt {t.prompt[:40]!r}"))
    return pairs, dropped


def run_constitutional(cfg: Any) -> StageResult:
    """``scratchllm align constitutional``: write preference pairs (and the full traces) for DPO."""
    c = cfg.constitutional
    constitution = load_constitution(c.constitution)
    prompts = load_prompts(c.prompts) if c.prompts is not None else list(constitution.prompts)
    if not prompts:
        raise ScratchError(f"no prompts: {c.constitution} lists none and constitutional.prompts is not set",
                           "add prompts = [...] to the constitution or set constitutional.prompts=FILE.jsonl")
    prompts = prompts[: c.n_prompts]
    chat: Chat
    if c.backend == "openai":
        chat = OpenAIChat(c.base_url, c.model, os.environ.get(c.api_key_env), c.max_new_tokens, c.temperature)
    else:

        tokenizer = load_tokenizer(cfg.models.tokenizer)
        chat = LocalChat(load_model(cfg.models.policy, "policy", tokenizer), tokenizer, c.max_new_tokens,
                         c.temperature, cfg.seed)
    print(f"constitutional: {len(prompts)} prompts, {c.rounds} round(s), {len(constitution.principles)} "
          f"principles, backend {c.backend}", file=sys.stderr)
    traces = critique_and_revise(chat, prompts, constitution, c.rounds, cfg.seed)
    pairs, dropped = traces_to_pairs(traces)
    out = Path(c.out) if c.out is not None else Path(cfg.out_dir) / "pairs.jsonl"
    atomic_write_text(out.with_suffix(".traces.jsonl"),
                      "".join(json.dumps(t.__dict__, ensure_ascii=False) + "\n" for t in traces))
    if pairs:
        save_preferences(pairs, out)
    print(f"done: {len(pairs)} preference pairs -> {out} ({dropped} dropped: revision empty or unchanged); "
          f"traces -> {out.with_suffix('.traces.jsonl')}", file=sys.stderr)
    if not pairs:
        raise ScratchError("no preference pairs: every revision was empty or equal to the first answer",
                           "use a stronger model or endpoint, more rounds, or a higher temperature")
    return StageResult(outputs={"pairs": out, "traces": out.with_suffix(".traces.jsonl")},
                       metrics={"pairs": len(pairs), "dropped": dropped})
