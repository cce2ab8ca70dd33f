"""Decontamination: training documents that share a word n-gram with an evaluation set.

As GPT-3 and lm-evaluation-harness do it: text is normalised to lowercased words (runs of letters,
digits, ``_`` and non-ASCII characters; punctuation and whitespace differences vanish) and a document
is contaminated by an evaluation set if it contains any 13-gram of that set. Every string field of an
evaluation record (question, choices, context, answer, code) and all of them joined are queries; a
query shorter than ``ngram`` words but at least ``min_words`` long is matched whole (GPT-3 lowers n
for short examples the same way), and one shorter than ``min_words`` cannot be told apart from
ordinary text and is not used. N-grams are 64-bit hashes, so a false match by collision needs about
2^64 / (eval n-grams) document n-grams: none in practice.

The evaluation sets are the eval stage's own task files (every built-in task, and any task spec or
data file the config names), read through ``scratchllm.tasks.specs`` so the same files and formats
count for both stages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.data.config import DecontamConfig
from scratchllm.data.dedup import _MAX_BATCH_CHARS, _ngram_hashes, _word_hashes, shingle_hashes, words
from scratchllm.errors import ScratchError
from scratchllm.tasks.specs import builtin_tasks, load_spec, read_records, task_records


def eval_sets(entries: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Evaluation set name -> its records.

    ``entries``: ``"builtin"`` (every built-in task), a built-in task name, a task spec (``.toml``), or a
    data file (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.csv``, ``.txt``) as ``PATH`` or ``NAME=PATH``.
    """
    builtin = builtin_tasks()
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        name, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        if path == "builtin":
            for task, spec_path in builtin.items():
                out[task] = [r.data for r in task_records(load_spec(spec_path))]
        elif path in builtin:
            out[name or path] = [r.data for r in task_records(load_spec(builtin[path]))]
        elif path.endswith(".toml"):
            if not Path(path).is_file():
                raise ScratchError(f"decontam.tasks: task spec not found: {path}", "check the path")
            spec = load_spec(path)
            out[name or spec.name] = [r.data for r in task_records(spec)]
        else:
            p = Path(path).expanduser()
            if not p.is_file():
                raise ScratchError(
                    f"decontam.tasks: {entry!r} is not a built-in task, a task .toml or a data file",
                    f"built-in tasks: {', '.join(builtin)} (or \"builtin\" for all); or a path to a .jsonl file",
                )
            out[name or p.name.split(".")[0]] = [r.data for r in read_records(p)]
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


@dataclass
class DecontamStats:
    checked: int = 0
    contaminated: int = 0  # documents matching at least one evaluation set
    per_set: dict[str, int] = field(default_factory=dict)  # documents matching each set

    def add(self, other: DecontamStats) -> None:
        self.checked += other.checked
        self.contaminated += other.contaminated
        for k, v in other.per_set.items():
            self.per_set[k] = self.per_set.get(k, 0) + v


class Decontaminator:
    """Which evaluation sets each document overlaps; build once, then call on batches (picklable)."""

    def __init__(self, cfg: DecontamConfig, sets: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.cfg = cfg
        sets = eval_sets(cfg.tasks) if sets is None else sets
        self.names = sorted(sets)
        by_length: dict[int, dict[int, int]] = {}  # n -> {n-gram hash: bitmask of sets}
        self.queries = {name: 0 for name in self.names}  # usable queries per set
        self.too_short = {name: 0 for name in self.names}  # records with no usable query
        for bit, name in enumerate(self.names):
            for record in sets[name]:
                fields = _strings(record)
                usable = False
                for text in [*fields, " ".join(fields)] if len(fields) > 1 else fields:
                    n = min(len(words(text)), cfg.ngram)
                    if n < cfg.min_words:
                        continue
                    usable = True
                    self.queries[name] += 1
                    hashes, _ = shingle_hashes([text], n, bits=64)
                    table = by_length.setdefault(n, {})
                    for h in hashes.tolist():
                        table[h] = table.get(h, 0) | (1 << bit)
                if not usable:
                    self.too_short[name] += 1
        self._tables = {n: (np.array(sorted(t), np.uint64), t) for n, t in sorted(by_length.items())}
        self.stats = DecontamStats()

    def _match(self, texts: Sequence[str], masks: list[int], base: int) -> None:
        if not self._tables:
            return
        word_hashes = _word_hashes(texts)  # once; then the n-grams of each length used
        for n, (keys, table) in self._tables.items():
            hashes, offsets = _ngram_hashes(word_hashes, n, bits=64)
            if not len(hashes):
                continue
            pos = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)  # keys are few and sorted
            hit = np.flatnonzero(keys[pos] == hashes)
            if len(hit):
                docs = np.searchsorted(offsets, hit, side="right") - 1
                for d, h in zip(docs.tolist(), hashes[hit].tolist(), strict=True):
                    masks[base + d] |= table[h]

    @property
    def fingerprint(self) -> str:
        """Digest of the n-gram tables: changes when the evaluation sets do."""
        h = hashlib.sha256(repr(self.names).encode())
        for n, (keys, table) in self._tables.items():
            masks = np.array([table[k] for k in keys.tolist()], np.uint64)
            h.update(n.to_bytes(4, "little") + keys.tobytes() + masks.tobytes())
        return h.hexdigest()

    @property
    def ngrams(self) -> int:
        return sum(len(t[1]) for t in self._tables.values())

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        """For each text, the names of the evaluation sets it overlaps (empty if clean)."""
        masks = [0] * len(texts)
        start = 0
        while start < len(texts):  # groups of at most _MAX_BATCH_CHARS characters bound the hashing arrays
            end, size = start + 1, len(texts[start])
            while end < len(texts) and size + len(texts[end]) <= _MAX_BATCH_CHARS:
                size += len(texts[end])
                end += 1
            self._match(texts[start:end], masks, start)
            start = end
        out = [[name for bit, name in enumerate(self.names) if m >> bit & 1] for m in masks]
        self.stats.checked += len(texts)
        for hits in out:
            if hits:
                self.stats.contaminated += 1
                for name in hits:
                    self.stats.per_set[name] = self.stats.per_set.get(name, 0) + 1
        return out
