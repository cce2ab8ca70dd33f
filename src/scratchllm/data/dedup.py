"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash + LSH banding).

MinHash, from scratch and vectorised with numpy:

1. Shingles: ``ngram`` consecutive lowercased words (runs of ASCII letters, digits, ``_`` and
   non-ASCII characters); a document with fewer words is one shingle. A batch of documents is one
   UTF-8 byte buffer: word boundaries come from a byte-class table, word hashes from polynomial
   prefix sums (``sum b_k P^(k-start) mod 2^64``), and a shingle's hash is a position-weighted sum
   of its word hashes, mixed with the MurmurHash3 finaliser and cut to 32 bits. No Python loop
   runs per word or per shingle.
2. Permutations, exactly as datasketch 2.x draws them (``np.random.RandomState(seed)``), so that
   signatures can be compared with datasketch's bit for bit:
   ``affine32`` (datasketch's default): ``h -> a*fmix32(h) + b mod 2^32`` with odd ``a``;
   ``legacy`` (datasketch < 2.0): ``h -> ((a*h + b) mod 2^64 mod (2^61 - 1)) & (2^32 - 1)``.
   Each chunk of shingles is a (shingles x num_perm) matrix; per-document minima come from one
   ``np.minimum.reduceat``.
3. LSH: the signature is cut into ``bands`` bands of ``rows`` values; documents sharing any band
   hash are candidates. ``bands x rows`` is chosen from the threshold by minimising the weighted
   false-positive/false-negative areas under the S-curve (as datasketch's ``_optimal_param``).
   Candidates are verified with the full-signature Jaccard estimate before a document is dropped.

Streaming: documents arrive in batches and are compared with every earlier document (kept or not),
so the first occurrence is kept. Memory grows with the number of documents, not with their size:
a signature of ``4 * num_perm`` bytes, ``bands`` entries of 12 bytes in an open-addressing table
(64-bit band key, 32-bit document number) and one 16-byte exact key, tables kept at most 3/4 full:
about 0.9-1.1 KB per document with the defaults (docs/data.md has the measured figure).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scratchllm.data.config import DedupConfig

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH32 = np.uint32((1 << 32) - 1)
_WORD = re.compile(r"[0-9a-z_\x80-\U0010ffff]+")  # on lowercased text; matches _WORD_BYTE on UTF-8
_WORD_BYTE = np.zeros(256, np.bool_)
_WORD_BYTE[[*range(48, 58), *range(97, 123), 95, *range(128, 256)]] = True
_POLY = np.uint64(0x100000001B3)  # odd, so invertible mod 2^64
_POLY_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_SHINGLE_MIX = np.random.RandomState(0x5EED).randint(1, 1 << 62, 64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_CHUNK_ROWS = 2048
_MAX_BATCH_CHARS = 2_000_000  # shingles per (rows x num_perm) block: small enough to stay in cache


# ----------------------------------------------------------------------------------------------
# Exact


def exact_key(text: str) -> bytes:
    """Digest of the text with case and whitespace differences removed."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


# ----------------------------------------------------------------------------------------------
# Hashing


def fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


_powers_cache: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^k and P^-k mod 2^64 for k < n (cached; grown by doubling)."""
    pw, inv = _powers_cache
    if len(pw) < n:
        size = max(n, 2 * len(pw), 1 << 16)
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.full(size, _POLY, np.uint64))
            inv = np.cumprod(np.full(size, _POLY_INV, np.uint64))
        pw = np.concatenate([[np.uint64(1)], pw[:-1]])
        inv = np.concatenate([[np.uint64(1)], inv[:-1]])
        _powers_cache[:] = [pw, inv]
    return pw[:n], inv[:n]


def words(text: str) -> list[str]:
    """Lowercased words: runs of ASCII letters, digits, '_' and any non-ASCII characters."""
    return _WORD.findall(text.lower())


def shingles(text: str, ngram: int) -> list[bytes]:
    """The shingles of one document as bytes: the reference form of what :func:`shingle_hashes` hashes."""
    w = words(text)
    if len(w) < ngram:
        return [" ".join(w).encode()] if w else []
    return [" ".join(w[i : i + ngram]).encode() for i in range(len(w) - ngram + 1)]


def shingle_hashes(texts: Sequence[str], ngram: int, bits: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """32-bit (or 64-bit) hashes of all shingles of ``texts`` and offsets: doc i owns ``hashes[off[i]:off[i+1]]``.

    One pass over one byte buffer for the whole batch: word boundaries from a byte-class table,
    word hashes from polynomial prefix sums, shingle hashes as a position-weighted sum of the
    ``ngram`` word hashes (so equal word n-grams hash equally wherever they occur).
    """
    if sum(map(len, texts)) > _MAX_BATCH_CHARS and len(texts) > 1:  # bound the prefix-sum arrays
        half = len(texts) // 2
        (h1, o1), (h2, o2) = shingle_hashes(texts[:half], ngram, bits), shingle_hashes(texts[half:], ngram, bits)
        return np.concatenate([h1, h2]), np.concatenate([o1, o2[1:] + o1[-1]])
    words_ = _word_hashes(texts)
    return _ngram_hashes(words_, ngram, bits)


def _word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(64-bit hash of every word, the document of every word, words per document, number of documents)."""
    parts = [t.lower().encode("utf-8") for t in texts]
    buf = np.frombuffer(b"\n".join(parts), np.uint8)
    doc_start = np.concatenate([[0], np.cumsum([len(p) + 1 for p in parts])[:-1]]).astype(np.int64)
    edges = np.diff(_WORD_BYTE[buf].view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    doc_of_word = np.searchsorted(doc_start, starts, side="right") - 1
    counts = np.bincount(doc_of_word, minlength=len(texts))

    pw, inv = _powers(len(buf) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(buf) + 1, np.uint64)
        np.cumsum(buf.astype(np.uint64) * pw[: len(buf)], out=prefix[1:])
        word_hash = fmix64((prefix[ends] - prefix[starts]) * inv[starts])
    return word_hash, doc_of_word, counts, len(texts)


def _ngram_hashes(word_hashes: tuple[np.ndarray, np.ndarray, np.ndarray, int], ngram: int,
                  bits: int = 32) -> tuple[np.ndarray, np.ndarray]:
    word_hash, doc_of_word, counts, n_docs = word_hashes
    first = (np.cumsum(counts) - counts)[doc_of_word]
    last = first + counts[doc_of_word] - 1
    i = np.arange(len(word_hash))
    valid = (i + ngram - 1 <= last) | ((i == first) & (counts[doc_of_word] < ngram))  # short doc: one shingle
    i, last = i[valid], last[valid]
    acc = np.zeros(len(i), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            pos = i + j
            inside = pos <= last
            acc += np.where(inside, word_hash[np.minimum(pos, len(word_hash) - 1)], np.uint64(0)) * _SHINGLE_MIX[j]
        h = fmix64(acc)
    hashes = h if bits == 64 else (h & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    per_doc = np.bincount(doc_of_word[valid], minlength=n_docs)
    return hashes, np.concatenate([[0], np.cumsum(per_doc)])


# ----------------------------------------------------------------------------------------------
# MinHash


def permutations(num_perm: int, seed: int = 1, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """Permutation parameters (a, b), drawn exactly as datasketch 2.x ``MinHash(num_perm, seed, scheme=...)``."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = [
            (gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
            for _ in range(num_perm)
        ]
        a, b = np.array(ab, dtype=np.uint64).T
        return a.copy(), b.copy()
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def signatures(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures, one row per document; a document without shingles keeps the maximum value.

    Blocks are laid out (num_perm, shingles) so that the per-document minimum is a reduction along
    contiguous memory (``np.minimum.reduceat(..., axis=1)``), several times faster than along axis 0.
    """
    legacy = a.dtype == np.uint64
    n_docs, num_perm = len(offsets) - 1, len(a)
    sig = np.full((n_docs, num_perm), MAX_HASH32, np.uint64 if legacy else np.uint32)
    if len(hashes) == 0:
        return sig
    doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
    hv = hashes.astype(np.uint64) if legacy else fmix32(hashes)
    a_col, b_col = a[:, None], b[:, None]
    block = np.empty((num_perm, _CHUNK_ROWS), sig.dtype)
    with np.errstate(over="ignore"):
        for c0 in range(0, len(hv), _CHUNK_ROWS):
            h, docs = hv[c0 : c0 + _CHUNK_ROWS], doc_of[c0 : c0 + _CHUNK_ROWS]
            x = np.multiply(a_col, h, out=block[:, : len(h)])
            np.add(x, b_col, out=x)
            if legacy:
                np.remainder(x, MERSENNE_PRIME, out=x)
                np.bitwise_and(x, np.uint64(MAX_HASH32), out=x)
            seg = np.flatnonzero(np.diff(docs, prepend=-1))
            rows = docs[seg]
            sig[rows] = np.minimum(sig[rows], np.minimum.reduceat(x, seg, axis=1).T)
    return sig


def minhash(texts: Sequence[str], num_perm: int = 128, seed: int = 1, ngram: int = 5, scheme: str = "affine32"):
    """Signatures of ``texts`` (convenience wrapper)."""
    a, b = permutations(num_perm, seed, scheme)
    return signatures(*shingle_hashes(texts, ngram), a, b)


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    return (sig_a == sig_b).mean(axis=-1)


# ----------------------------------------------------------------------------------------------
# LSH


def lsh_probability(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray | float:
    """Probability that two documents of Jaccard similarity ``s`` share at least one band."""
    return 1.0 - (1.0 - np.asarray(s, dtype=float) ** rows) ** bands


@functools.lru_cache(maxsize=64)
def optimal_params(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) minimising fp_w * P(candidate | s < t) + fn_w * P(miss | s >= t), areas under the S-curve."""
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float)
    b, r = pairs[:, :1], pairs[:, 1:]

    def area(lo: float, hi: float, miss: bool) -> np.ndarray:  # Simpson's rule, 2k+1 points
        x = np.linspace(lo, hi, 2001)[None, :]
        y = lsh_probability(x, b, r)
        y = 1.0 - y if miss else y
        w = np.ones(x.shape[1])
        w[1:-1:2], w[2:-1:2] = 4, 2
        return (y * w).sum(axis=1) * (hi - lo) / (3 * (x.shape[1] - 1))

    error = false_positive_weight * area(0.0, threshold, False) + false_negative_weight * area(threshold, 1.0, True)
    best = int(np.argmin(error))
    return int(pairs[best, 0]), int(pairs[best, 1])


@dataclass
class DedupStats:
    seen: int = 0
    exact_removed: int = 0
    near_removed: int = 0
    candidates: int = 0  # candidate pairs from LSH that were checked
    rejected_candidates: int = 0  # ... and failed the full-signature check


@dataclass
class Fingerprints:
    """What :meth:`Deduplicator.decide` needs about a batch of documents."""

    n: int
    exact: list[bytes] | None
    sigs: np.ndarray | None  # (n, num_perm)
    band_keys: np.ndarray | None  # (n, bands) uint64
    empty: np.ndarray | None  # (n,) bool: no shingles


class Deduplicator:
    """Streaming exact + near-duplicate removal; first occurrence wins."""

    MAX_BUCKET = 64  # documents remembered per band key (keeps pathological clusters cheap)

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        self.stats = DedupStats()
        self._exact = _ExactSet()
        self.a, self.b = permutations(cfg.num_perm, cfg.seed, cfg.scheme)
        if cfg.bands:
            self.bands, self.rows = cfg.bands, cfg.rows
        else:
            self.bands, self.rows = optimal_params(
                cfg.threshold, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight
            )
        rng = np.random.RandomState(cfg.seed + 7919)
        self._mix = rng.randint(1, 1 << 62, self.rows, dtype=np.uint64) | np.uint64(1)
        self._salt = rng.randint(0, 1 << 62, self.bands, dtype=np.uint64)
        self._index = _MultiMap()  # band key -> documents (at most MAX_BUCKET per key)
        self._sigs = np.empty((1024, cfg.num_perm), self.a.dtype if cfg.scheme == "legacy" else np.uint32)
        self._n = 0

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """One 64-bit key per (document, band)."""
        used = sig[:, : self.bands * self.rows].astype(np.uint64).reshape(len(sig), self.bands, self.rows)
        with np.errstate(over="ignore"):
            return fmix64((used * self._mix).sum(axis=2, dtype=np.uint64) + self._salt)

    def __call__(self, texts: Sequence[str]) -> list[bool]:
        """For each text, True if it duplicates an earlier one (exactly or nearly); state is updated."""
        return self.decide(self.fingerprints(texts))

    def fingerprints(self, texts: Sequence[str]) -> Fingerprints:
        """The per-document part (exact keys, MinHash signatures, band keys): pure, so it runs in worker processes."""
        keys = [exact_key(t) for t in texts] if self.cfg.exact else None
        if not self.cfg.near or not texts:
            return Fingerprints(len(texts), keys, None, None, None)
        hashes, offsets = shingle_hashes(texts, self.cfg.ngram)
        sigs = signatures(hashes, offsets, self.a, self.b)
        return Fingerprints(len(texts), keys, sigs, self.band_keys(sigs), np.diff(offsets) == 0)

    def decide(self, fp: Fingerprints) -> list[bool]:
        """The global part: compare with every earlier document, in order; state is updated.

        Only this runs in the main process, so the result does not depend on how many workers made ``fp``.
        The whole batch is looked up in the tables at once (numpy); what earlier documents of the same
        batch add is kept in a small dict until the batch is done, so each decision sees exactly the
        documents before it, as if they were decided one by one.
        """
        self.stats.seen += fp.n
        dup = [False] * fp.n
        if fp.exact is not None and fp.n:
            for i in np.flatnonzero(self._exact.add(fp.exact)).tolist():  # an exact copy of an earlier document
                dup[i] = True
                self.stats.exact_removed += 1
        if fp.sigs is None:
            return dup
        todo = [i for i in range(fp.n) if not dup[i] and not fp.empty[i]]
        if not todo:
            return dup
        bands, index, m = self.bands, self._index, len(todo)
        keys = np.ascontiguousarray(fp.band_keys[todo], dtype=np.uint64)
        flat = keys.ravel()
        hit_query, hit_doc, counts = index.lookup(flat)
        # A row whose keys are in no bucket and in no earlier row of this batch has no candidates:
        # it is kept and joins all its buckets, which numpy does for all such rows at once. Only the
        # other rows, and rows sharing a key with a later one, go through the loop below, in order.
        _, inverse, repeats = np.unique(flat, return_inverse=True, return_counts=True)
        shared = (repeats[inverse] > 1).reshape(m, bands).any(axis=1)
        looped = counts.reshape(m, bands).any(axis=1) | shared
        docs = self._store_all(fp.sigs[todo])  # row r is document docs[r], stored in row order
        new_keys = [keys[~looped].ravel()]
        new_docs = [np.repeat(docs[~looped], bands).astype(np.uint32)]
        order = np.argsort(hit_query, kind="stable")
        hit_doc, hit_row = hit_doc[order], hit_query[order] // bands
        bounds = np.searchsorted(hit_row, np.arange(m + 1)).tolist()
        counts = counts.reshape(m, bands)
        pending: dict[int, list[int]] = {}  # band key -> documents of this batch added to it
        more_keys: list[int] = []
        more_docs: list[int] = []
        for r in np.flatnonzero(looped).tolist():
            row, doc = keys[r].tolist(), int(docs[r])
            found = set(hit_doc[bounds[r] : bounds[r + 1]].tolist())
            for k in row:
                v = pending.get(k)
                if v is not None:
                    found.update(v)
            is_dup = False
            if found:
                cand = np.fromiter(found, np.int64, len(found))
                est = (self._sigs[cand] == fp.sigs[todo[r]]).mean(axis=1)
                self.stats.candidates += len(cand)
                self.stats.rejected_candidates += int((est < self.cfg.threshold).sum())
                is_dup = bool(est.max() >= self.cfg.threshold)
            # Duplicates only claim keys nobody has; originals join buckets of up to MAX_BUCKET.
            for k, c in zip(row, counts[r].tolist()):
                v = pending.get(k)
                c += len(v) if v is not None else 0
                if c == 0 or (not is_dup and c < self.MAX_BUCKET):
                    if v is None:
                        pending[k] = [doc]
                    else:
                        v.append(doc)
                    more_keys.append(k)
                    more_docs.append(doc)
            if is_dup:
                dup[todo[r]] = True
                self.stats.near_removed += 1
        new_keys.append(np.array(more_keys, np.uint64))
        new_docs.append(np.array(more_docs, np.uint32))
        index.insert(np.concatenate(new_keys), np.concatenate(new_docs))
        return dup

    def _store_all(self, sigs: np.ndarray) -> np.ndarray:
        """Append signatures; their document numbers."""
        n = self._n + len(sigs)
        if n > len(self._sigs):
            cap = len(self._sigs)
            while cap < n:
                cap *= 2
            # Copy only the rows in use: the fresh part stays untouched, so not resident, until written.
            grown = np.empty((cap, self._sigs.shape[1]), self._sigs.dtype)
            grown[: self._n] = self._sigs[: self._n]
            self._sigs = grown
        self._sigs[self._n : n] = sigs
        docs = np.arange(self._n, n)
        self._n = n
        return docs

    def state_bytes(self) -> int:
        """Bytes held by the index (signatures in use, both hash tables)."""
        return self._n * self._sigs.shape[1] * self._sigs.itemsize + self._index.nbytes + self._exact.nbytes

    def __setstate__(self, state: dict) -> None:
        # A checkpoint written before the tables were numpy (a set and a dict): convert it.
        if isinstance(state.get("_exact"), set):
            old_exact, exact = state["_exact"], _ExactSet()
            if old_exact:
                exact.add(list(old_exact))
            state["_exact"] = exact
        if isinstance(state.get("_index"), dict):
            old_index, index = state["_index"], _MultiMap()
            ks = [k for k, v in old_index.items() for _ in (v if isinstance(v, list) else (v,))]
            ds = [d for v in old_index.values() for d in (v if isinstance(v, list) else (v,))]
            index.insert(np.array(ks, np.uint64), np.array(ds, np.uint32))
            state["_index"] = index
        self.__dict__.update(state)


# ----------------------------------------------------------------------------------------------
# Compact hash tables: flat numpy arrays with linear probing, kept at most 3/4 full, probed for a
# whole batch of keys at once. A Python dict entry costs ~100 bytes per key; these cost 12-16 bytes
# per slot. Keys are already uniform 64-bit hashes, so their low bits pick the slot.

_EMPTY = np.uint32(0xFFFFFFFF)
_MAX_LOAD = 0.75


class _MultiMap:
    """uint64 key -> uint32 values; a key may hold several values (each its own slot, same probe run)."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        self.keys = np.zeros(capacity, np.uint64)
        self.vals = np.full(capacity, _EMPTY, np.uint32)
        self.size = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.vals.nbytes

    def lookup(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query number, value) of every match, and the number of values per query."""
        mask = len(self.keys) - 1
        pos = (q & np.uint64(mask)).astype(np.int64)
        active = np.arange(len(q))
        hq: list[np.ndarray] = []
        hv: list[np.ndarray] = []
        while active.size:  # one step along every query's probe run; a run ends at an empty slot
            p = pos[active]
            v = self.vals[p]
            occupied = v != _EMPTY
            active, p, v = active[occupied], p[occupied], v[occupied]
            match = self.keys[p] == q[active]
            hq.append(active[match])
            hv.append(v[match])
            pos[active] = (p + 1) & mask
        hit_q = np.concatenate(hq) if hq else np.zeros(0, np.int64)
        hit_v = np.concatenate(hv) if hv else np.zeros(0, np.uint32)
        return hit_q, hit_v, np.bincount(hit_q, minlength=len(q))

    def insert(self, keys: np.ndarray, vals: np.ndarray) -> None:
        if self.size + len(keys) > _MAX_LOAD * len(self.keys):
            cap = len(self.keys)
            while self.size + len(keys) > _MAX_LOAD * cap:
                cap *= 2
            used = self.vals != _EMPTY
            old_keys, old_vals = self.keys[used], self.vals[used]
            self.keys, self.vals = np.zeros(cap, np.uint64), np.full(cap, _EMPTY, np.uint32)
            self.size = 0
            self._place(old_keys, old_vals)
        self._place(keys, vals)

    def _place(self, keys: np.ndarray, vals: np.ndarray) -> None:
        mask = len(self.keys) - 1
        pos = (keys & np.uint64(mask)).astype(np.int64)
        todo = np.arange(len(keys))
        while todo.size:
            p = pos[todo]
            free = self.vals[p] == _EMPTY
            # Of several keys wanting the same free slot one takes it (each writes its number there
            # and the one read back won); the others retry there (now taken) and move on, as does
            # every key whose slot was taken already.
            cand, pc = todo[free], p[free]
            self.vals[pc] = cand
            won = self.vals[pc] == cand
            self.keys[pc[won]] = keys[cand[won]]
            self.vals[pc[won]] = vals[cand[won]]
            moving = todo[~free]
            pos[moving] = (pos[moving] + 1) & mask
            todo = np.concatenate([moving, cand[~won]])
        self.size += len(keys)


class _ExactSet:
    """A set of 16-byte keys (two uint64 columns; the all-zero key is stored in a flag)."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        self.table = np.zeros((capacity, 2), np.uint64)
        self.size = 0
        self.has_zero = False

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def add(self, keys: Sequence[bytes]) -> np.ndarray:
        """Add keys in order; True where the key was there already (before, or earlier in ``keys``)."""
        k = np.frombuffer(b"".join(keys), np.uint64).reshape(len(keys), 2)
        if k.shape[0] * 16 != sum(map(len, keys)):
            raise ValueError("exact keys must be 16 bytes")
        seen = np.zeros(len(k), np.bool_)
        zero = (k == 0).all(axis=1)
        for j, i in enumerate(np.flatnonzero(zero).tolist()):
            seen[i] = self.has_zero or j > 0
            self.has_zero = True
        nz = np.flatnonzero(~zero)
        _, first = np.unique(k[nz].view(np.dtype((np.void, 16))).ravel(), return_index=True)
        later = np.ones(len(nz), np.bool_)
        later[first] = False
        seen[nz[later]] = True  # a repeat within this batch
        firsts = nz[first]
        found = self._contains(k[firsts])
        seen[firsts[found]] = True
        new = k[firsts[~found]]
        if self.size + len(new) > _MAX_LOAD * len(self.table):
            cap = len(self.table)
            while self.size + len(new) > _MAX_LOAD * cap:
                cap *= 2
            old = self.table[(self.table != 0).any(axis=1)]
            self.table, self.size = np.zeros((cap, 2), np.uint64), 0
            self._place(old)
        self._place(new)
        return seen

    def _contains(self, q: np.ndarray) -> np.ndarray:
        mask = len(self.table) - 1
        pos = (q[:, 0] & np.uint64(mask)).astype(np.int64)
        found = np.zeros(len(q), np.bool_)
        active = np.arange(len(q))
        while active.size:
            row = self.table[pos[active]]
            occupied = (row != 0).any(axis=1)
            match = occupied & (row == q[active]).all(axis=1)
            found[active[match]] = True
            active = active[occupied & ~match]
            pos[active] = (pos[active] + 1) & mask
        return found

    def _place(self, keys: np.ndarray) -> None:  # distinct keys, none in the table yet
        mask = len(self.table) - 1
        pos = (keys[:, 0] & np.uint64(mask)).astype(np.int64)
        todo = np.arange(len(keys))
        while todo.size:
            p = pos[todo]
            free = ~(self.table[p] != 0).any(axis=1)
            cand, pc = todo[free], p[free]
            self.table[pc, 0] = cand + 1  # claim as in _MultiMap._place (+ 1: nonzero, so taken)
            won = self.table[pc, 0] == cand + 1
            self.table[pc[won]] = keys[cand[won]]
            moving = todo[~free]
            pos[moving] = (pos[moving] + 1) & mask
            todo = np.concatenate([moving, cand[~won]])
        self.size += len(keys)
