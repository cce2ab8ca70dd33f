"""Byte-level BPE: the trainer, the encoder/decoder and our save format.

How it works, in brief:

* Text is split into chunks by a regex (``patterns.py``); BPE runs inside each chunk only.
* Every chunk starts as its UTF-8 bytes, so any string is encodable and ids 0..255 are the bytes.
* Training repeatedly merges the most frequent adjacent pair into a new token. Pair counts are kept
  up to date incrementally: a merge touches only the words that contain the pair (found through an
  index pair -> words), and a lazy max-heap yields the next most frequent pair.
* Encoding applies the learned merges in the order they were learned (lowest rank first), which is
  what Hugging Face ``tokenizers`` does, and, because every token has a unique byte string whose
  rank is its merge order, also what ``tiktoken`` does.
* Special tokens (``<|bos|>`` ...) are never produced by BPE; in user text they are only recognised
  when allowed (``allowed_special``), otherwise they are encoded as ordinary text.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import regex
from tqdm import tqdm

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text, read_text
from scratchllm.tokenizer.chat import BOS, DEFAULT_SPECIAL_TOKENS, EOS, PAD
from scratchllm.tokenizer.patterns import compile_ascii_pattern, compile_pattern, resolve_pattern

FORMAT = "scratchllm-bpe"
FORMAT_VERSION = 1
TOKENIZER_FILE = "scratchllm_tokenizer.json"

# Chunks at least this long use the O(n log n) heap merger; short ones the simpler O(n^2) scan.
_LONG_CHUNK = 48
_CACHE_LIMIT = 200_000
_NO_MERGE = 1 << 62  # rank of a pair that is not a merge
# Batches smaller than this (in characters) are encoded in-process: workers cost more than they save.
_PARALLEL_MIN_CHARS = 2_000_000

AllowedSpecial = Literal["all", "none"] | Collection[str]


class Tokenizer:
    """A trained byte-level BPE tokenizer.

    ``merges`` lists learned pairs in rank order as ``(left_id, right_id, new_id)``; ``byte_ids[b]``
    is the id of single byte ``b`` (``range(256)`` for tokenizers we train; imported ones may differ).
    """

    def __init__(
        self,
        pattern: str,
        merges: Sequence[tuple[int, int, int]],
        special_tokens: dict[str, int] | None = None,
        byte_ids: Sequence[int] | None = None,
    ) -> None:
        self.pattern = resolve_pattern(pattern)
        self._pat = compile_pattern(self.pattern)
        self._ascii_pat = compile_ascii_pattern(self.pattern)  # None for patterns we have no spelling of
        self.byte_ids = list(byte_ids) if byte_ids is not None else list(range(256))
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = dict(special_tokens or {})

        if len(self.byte_ids) != 256 or len(set(self.byte_ids)) != 256:
            raise ValueError("byte_ids must map the 256 byte values to distinct ids")
        id_bytes: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        self._ranks: dict[tuple[int, int], int] = {}
        # _right[a][b] is the rank of merge (a, b): a list index and a small-int dict lookup, no
        # (a, b) tuple to build and hash on the hot path of _encode_chunk.
        self._right: list[dict[int, int]] = []
        self._merged_id: list[int] = []  # rank -> id of the merged token
        # _joinable[x][y] is 1 if byte y follows byte x somewhere inside a token (see _split_encode).
        # Every byte pair inside a token is inside one of its two halves or at their junction, so
        # the junctions of all merges are all of them.
        self._joinable = [bytearray(256) for _ in range(256)]
        for rank, (a, b, new) in enumerate(self.merges):
            if a not in id_bytes or b not in id_bytes:
                raise ValueError(f"merge {rank} uses an id defined by no earlier merge")
            merged = id_bytes[a] + id_bytes[b]
            # HF's trainer may reach one byte string by two merges and reuse its id; accept that.
            if id_bytes.setdefault(new, merged) != merged:
                raise ValueError(f"merge {rank} reuses id {new} for different bytes")
            self._ranks[(a, b)] = rank
            self._merged_id.append(new)
            self._joinable[id_bytes[a][-1]][id_bytes[b][0]] = 1
        for text, i in self.special_tokens.items():
            if i in id_bytes:
                raise ValueError(f"special token {text!r} reuses id {i}")
            id_bytes[i] = text.encode("utf-8")
        self.vocab_size = max(id_bytes) + 1
        if len(id_bytes) != self.vocab_size:
            raise ValueError("token ids are not contiguous")
        self._id_bytes: list[bytes] = [id_bytes[i] for i in range(self.vocab_size)]
        no_merges: dict[int, int] = {}  # shared by every token that starts no merge
        self._right = [no_merges] * self.vocab_size
        for (a, b), rank in self._ranks.items():
            if self._right[a] is no_merges:
                self._right[a] = {}
            self._right[a][b] = rank
        self._identity_bytes = self.byte_ids == list(range(256))
        self._special_pat: regex.Pattern[str] | None = None
        self._cache = _ChunkCache(self._encode_new_chunk)  # chunk -> ids, filled on first lookup
        self._piece_cache: dict[bytes, list[int]] = {}  # piece of a chunk (see _split_encode) -> ids
        # Many chunks are one whole token. Its own bytes encode to that token when the merges that
        # build it win over every competing merge, which holds for all tokens of a trained vocab
        # but not for any merge list; so keep the tokens for which BPE was checked to give them.
        # (Rank order: the check of a token may use the shortcut for tokens checked before it.)
        self._whole_tokens: dict[bytes, int] = {}
        for _, _, new in self.merges:
            if self._encode_chunk(id_bytes[new]) == [new]:
                self._whole_tokens[id_bytes[new]] = new

    # ----------------------------------------------------------------------------------- encoding
    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Encode ``text``. Special-token text is recognised only if allowed (``"all"`` or a set)."""
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        pat = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
        ids: list[int] = []
        for i, part in enumerate(pat.split(text)):
            if i % 2:  # captured separator: a special token
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def _allowed(self, allowed_special: AllowedSpecial) -> set[str]:
        if allowed_special == "none":
            return set()
        if allowed_special == "all":
            return set(self.special_tokens)
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise ScratchError(f"unknown special token(s): {', '.join(sorted(unknown))}",
                               f"this tokenizer has: {', '.join(self.special_tokens)}")
        return set(allowed_special)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating every character as ordinary text (special tokens are not recognised)."""
        cache = self._cache
        if len(cache) + len(self._piece_cache) > _CACHE_LIMIT:
            cache.clear()
            self._piece_cache.clear()
        pat = self._ascii_pat if self._ascii_pat is not None and text.isascii() else self._pat
        chunks = pat.findall(text)
        # One dict lookup per chunk, in C; a miss calls _encode_new_chunk through __missing__.
        with _gc_paused():
            return list(itertools.chain.from_iterable(map(cache.__getitem__, chunks)))

    def _encode_new_chunk(self, chunk: str) -> list[int]:
        # A new non-ASCII chunk (a run of CJK, emoji, ...) is often made of pieces seen before; an
        # ASCII chunk of a trained vocab seldom has a cut, so skip the scan.
        data = chunk.encode("utf-8")
        return self._encode_chunk(data) if chunk.isascii() else self._split_encode(data)

    def _split_encode(self, data: bytes) -> list[int]:
        """BPE of a chunk, done piece by piece where merges cannot reach across, with cached pieces.

        Every merge makes a token, and a token contains only joinable byte pairs; so where two
        adjacent bytes are not joinable no merge ever crosses, and the bytes on each side are merged
        exactly as if they stood alone. Random CJK text, for instance, falls apart into characters
        that recur even when the chunk never does.
        """
        joinable, cache = self._joinable, self._piece_cache
        out: list[int] = []
        start = 0
        for end, (x, y) in enumerate(zip(data, data[1:]), 1):
            if not joinable[x][y]:
                piece = data[start:end]
                ids = cache.get(piece)
                if ids is None:
                    ids = cache[piece] = self._encode_chunk(piece)
                out += ids
                start = end
        piece = data[start:] if start else data
        ids = cache.get(piece)
        if ids is None:
            ids = cache[piece] = self._encode_chunk(piece)
        out += ids
        return out

    def _encode_chunk(self, data: bytes) -> list[int]:
        token = self._whole_tokens.get(data)
        if token is not None:  # the chunk is a single token (see __init__)
            return [token]
        ids = list(data) if self._identity_bytes else [self.byte_ids[b] for b in data]
        if len(ids) >= _LONG_CHUNK:
            return self._encode_long(ids)
        # Keep the rank of every adjacent pair; each step merges the leftmost lowest-rank pair
        # (min/index run in C) and recomputes only the two neighbouring ranks.
        right, merged_id, inf = self._right, self._merged_id, _NO_MERGE
        pair_ranks = list(map(dict.get, map(right.__getitem__, ids[:-1]), ids[1:], itertools.repeat(inf)))
        while pair_ranks:
            best = min(pair_ranks)
            if best == inf:
                break
            i = pair_ranks.index(best)
            new = merged_id[best]
            ids[i : i + 2] = (new,)
            del pair_ranks[i]
            if i > 0:
                pair_ranks[i - 1] = right[ids[i - 1]].get(new, inf)
            if i < len(pair_ranks):
                pair_ranks[i] = right[new].get(ids[i + 1], inf)
        return ids

    def _encode_long(self, ids: list[int]) -> list[int]:
        """Merge with a heap over (rank, position) and a linked list: O(n log n) for long chunks."""
        ranks, merged_id = self._ranks, self._merged_id
        n = len(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = [(ranks[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in ranks]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            # Skip entries made stale by an earlier merge at or next to this position.
            if not alive[i] or j >= n or ranks.get((ids[i], ids[j])) != rank:
                continue
            ids[i] = merged_id[rank]
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
                r = ranks.get((ids[i], ids[nxt[i]]))
                if r is not None:
                    heapq.heappush(heap, (r, i))
            if prv[i] >= 0:
                r = ranks.get((ids[prv[i]], ids[i]))
                if r is not None:
                    heapq.heappush(heap, (r, prv[i]))
        return [t for t, a in zip(ids, alive) if a]

    def encode_batch(
        self,
        texts: Sequence[str],
        allowed_special: AllowedSpecial = "none",
        num_workers: int | None = None,
        progress: bool = False,
    ) -> list[list[int]]:
        """Encode many texts; large batches are spread over worker processes (default: all cores)."""
        workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
        total = sum(len(t) for t in texts)
        bar = tqdm(total=len(texts), desc="encode", unit="doc", disable=not progress)
        if workers <= 1 or total < _PARALLEL_MIN_CHARS or len(texts) < 2:
            out = []
            for t in texts:
                out.append(self.encode(t, allowed_special))
                bar.update()
            bar.close()
            return out
        ctx = mp.get_context("spawn")  # no fork: the parent may hold threads (torch) or locks
        chunksize = max(1, min(256, len(texts) // (workers * 8)))
        with ctx.Pool(workers, initializer=_init_worker, initargs=(self.to_dict(), allowed_special)) as pool:
            out = []
            for ids in pool.imap(_encode_in_worker, texts, chunksize=chunksize):
                out.append(ids)
                bar.update()
        bar.close()
        return out

    # ----------------------------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join(self._id_bytes[i] for i in ids)
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ScratchError(f"token id {bad} is out of range for vocab size {self.vocab_size}",
                               "decode ids produced by this tokenizer") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode ids to text; byte sequences that are not valid UTF-8 become U+FFFD by default."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def id_to_bytes(self, i: int) -> bytes:
        return self._id_bytes[i]

    def token_id(self, special: str) -> int:
        try:
            return self.special_tokens[special]
        except KeyError:
            raise ScratchError(f"tokenizer has no special token {special!r}",
                               f"it has: {', '.join(self.special_tokens) or 'none'}") from None

    @property
    def bos_id(self) -> int:
        return self.token_id(BOS)

    @property
    def eos_id(self) -> int:
        return self.token_id(EOS)

    @property
    def pad_id(self) -> int:
        return self.token_id(PAD)

    def mergeable_ranks(self) -> dict[bytes, int]:
        """Non-special tokens as ``{bytes: id}``: the ranks ``tiktoken.Encoding`` is built from."""
        specials = set(self.special_tokens.values())
        return {b: i for i, b in enumerate(self._id_bytes) if i not in specials}

    # ----------------------------------------------------------------------------------- save/load
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "merges": [list(m) for m in self.merges],
        }
        if not self._identity_bytes:
            d["byte_ids"] = self.byte_ids
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> Tokenizer:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ScratchError(f"{source} is not a scratchllm tokenizer file",
                               "point at a file written by 'scratchllm tokenizer train' (or a tokenizer.json)")
        if d.get("version") != FORMAT_VERSION:
            raise ScratchError(f"{source} has format version {d.get('version')}, expected {FORMAT_VERSION}",
                               "retrain the tokenizer with this version of scratchllm")
        try:
            return cls(d["pattern"], [tuple(m) for m in d["merges"]], d.get("special_tokens", {}), d.get("byte_ids"))
        except (KeyError, TypeError, ValueError) as e:
            raise ScratchError(f"{source} is corrupt ({type(e).__name__}: {e})",
                               "retrain the tokenizer or restore the file from a backup") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write our format to ``path`` (a file), atomically."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path

    def save_pretrained(self, directory: str | os.PathLike[str], model_max_length: int | None = None) -> Path:
        """Write our file plus Hugging Face ``tokenizer.json`` / ``tokenizer_config.json`` to a directory."""
        from scratchllm.tokenizer.hf import save_hf_files  # lazy: hf.py imports Tokenizer from here

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save(directory / TOKENIZER_FILE)
        save_hf_files(self, directory, model_max_length=model_max_length)
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load from our file, a Hugging Face ``tokenizer.json``, or a directory holding either."""
        path = Path(path)
        if path.is_dir():
            for name in (TOKENIZER_FILE, "tokenizer.json"):
                if (path / name).is_file():
                    return cls.load(path / name)
            raise ScratchError(f"no tokenizer in directory {path}",
                               "train one with 'scratchllm tokenizer train' or point at the right directory")
        if not path.exists():
            raise ScratchError(f"tokenizer not found: {path}", "train one with 'scratchllm tokenizer train'")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScratchError(f"tokenizer file {path} is corrupt or truncated ({e})",
                               "retrain the tokenizer or restore the file from a backup") from None
        if isinstance(d, dict) and "model" in d and d.get("format") != FORMAT:
            from scratchllm.tokenizer.hf import from_hf_dict  # lazy: as above

            return from_hf_dict(d, source=str(path))
        return cls.from_dict(d, source=str(path))

    from_pretrained = load

    @classmethod
    def load_hf_json(cls, text: str, source: str = "tokenizer.json") -> Tokenizer:
        """Import a Hugging Face byte-level BPE ``tokenizer.json`` given as a string."""
        from scratchllm.tokenizer.hf import from_hf_dict  # lazy: as above

        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScratchError(f"{source} is not valid JSON ({e})", "re-export the tokenizer") from None
        return from_hf_dict(d, source=source)

    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["pattern"], state["merges"], state["special_tokens"], state.get("byte_ids"))  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special={len(self.special_tokens)})"


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: encoding allocates many small lists that can never form cycles, and
    collections triggered by them (which also rescan the cache) cost about a tenth of encode time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _ChunkCache(dict[str, list[int]]):
    """chunk -> ids; a missing chunk is encoded and stored on lookup, so a hit costs one C lookup."""

    def __init__(self, encode: Any) -> None:
        super().__init__()
        self._encode = encode

    def __missing__(self, chunk: str) -> list[int]:
        ids = self[chunk] = self._encode(chunk)
        return ids


_worker_tok: Tokenizer | None = None
_worker_allowed: AllowedSpecial = "none"


def _init_worker(state: dict[str, Any], allowed_special: AllowedSpecial) -> None:
    global _worker_tok, _worker_allowed
    _worker_tok = Tokenizer.from_dict(state)
    _worker_allowed = allowed_special


def _encode_in_worker(text: str) -> list[int]:
    assert _worker_tok is not None
    return _worker_tok.encode(text, _worker_allowed)


# --------------------------------------------------------------------------------------- training
def count_chunks(texts: Iterable[str], pattern: str, progress: bool = False) -> Counter[str]:
    """Count the pre-tokenization chunks of a stream of texts."""
    pat = compile_pattern(pattern)
    counts: Counter[str] = Counter()
    bar = tqdm(desc="pre-tokenize", unit="B", unit_scale=True, disable=not progress)
    for text in texts:
        counts.update(pat.findall(text))
        bar.update(len(text))
    bar.close()
    return counts


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str = "gpt4",
    special_tokens: Sequence[str] | None = None,
    min_frequency: int = 2,
    progress: bool = False,
) -> Tokenizer:
    """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``texts``.

    ``min_frequency`` stops training early when the best pair is rarer than that (so the vocab
    can come out smaller than asked on a tiny corpus). Special tokens get the ids after the merges.
    """
    specials = list(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if len(set(specials)) != len(specials):
        raise ScratchError("special tokens contain duplicates", "list each special token once")
    minimum = 256 + len(specials)
    if vocab_size < minimum:
        raise ScratchError(
            f"vocab_size {vocab_size} is too small: 256 byte tokens + {len(specials)} special tokens need {minimum}",
            f"set vocab_size to at least {minimum} (typical: 4096-65536)",
        )
    counts = count_chunks(texts, pattern, progress=progress)
    if not counts:
        raise ScratchError("the training corpus is empty", "give the trainer some text (non-empty files)")
    merges = _learn_merges(counts, vocab_size - minimum, min_frequency, progress)
    first_special = 256 + len(merges)
    return Tokenizer(pattern, merges, {s: first_special + i for i, s in enumerate(specials)})


def _learn_merges(
    chunk_counts: Counter[str], num_merges: int, min_frequency: int, progress: bool
) -> list[tuple[int, int, int]]:
    words: list[list[int]] = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs: list[int] = list(chunk_counts.values())

    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + f
            where.setdefault(pair, set()).add(w)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    token_bytes = [bytes([b]) for b in range(256)]
    known = set(token_bytes)
    banned: set[tuple[int, int]] = set()
    merges: list[tuple[int, int, int]] = []
    bar = tqdm(total=num_merges, desc="merges", unit="merge", disable=not progress)
    while len(merges) < num_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:  # stale entry: its count went down since it was pushed
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        if count < min_frequency:
            break
        if pair in banned:
            continue
        a, b = pair
        merged = token_bytes[a] + token_bytes[b]
        if merged in known:
            # Another merge already made these bytes. Keeping byte strings unique keeps ranks
            # well defined, so tiktoken's rank-based encoder agrees with merge-order BPE.
            banned.add(pair)
            continue
        new = 256 + len(merges)
        merges.append((a, b, new))
        token_bytes.append(merged)
        known.add(merged)
        bar.update()

        # Rewrite only the words that contain the pair, accumulating pair-count changes.
        delta: dict[tuple[int, int], int] = {}
        for w in where.pop(pair, ()):
            word = words[w]
            out: list[int] = []
            i, n = 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == a and word[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            if len(out) == n:
                continue
            f = freqs[w]
            for p in zip(word, word[1:]):
                delta[p] = delta.get(p, 0) - f
            for p in zip(out, out[1:]):
                delta[p] = delta.get(p, 0) + f
                if p[0] == new or p[1] == new:
                    where.setdefault(p, set()).add(w)
            words[w] = out
        for p, d in delta.items():
            if d:
                c = pair_counts.get(p, 0) + d
                pair_counts[p] = c
                if d > 0:
                    heapq.heappush(heap, (-c, p))
        pair_counts.pop(pair, None)
    bar.close()
    return merges


def iter_texts_from_files(paths: Iterable[str | os.PathLike[str]], errors: str = "strict") -> Iterator[str]:
    """Yield the contents of UTF-8 files, with a clear error for unreadable or invalid files."""
    for p in paths:
        yield read_text(p, errors=errors)
