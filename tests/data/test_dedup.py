from __future__ import annotations

import pickle
import random
from collections import defaultdict

import numpy as np
import pytest

from scratchllm.data import dedup as D
from scratchllm.data.config import DedupConfig


@pytest.fixture
def datasketch():
    """The reference implementation, only for the tests that compare against it."""
    return pytest.importorskip("datasketch")


def random_doc(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    return [rng.choice(vocab) for _ in range(n)]


def edit(rng: random.Random, words: list[str], vocab: list[str], rate: float) -> list[str]:
    out = list(words)
    for _ in range(max(1, int(rate * len(words)))):
        i = rng.randrange(len(out))
        op = rng.randrange(3)
        if op == 0:
            out[i] = rng.choice(vocab)
        elif op == 1:
            out.insert(i, rng.choice(vocab))
        elif len(out) > 10:
            del out[i]
    return out


def planted_corpus(seed: int = 0, n_base: int = 250):
    """Originals, near-duplicates (small edits, also of other copies), exact copies (case/spacing),
    and hard negatives (sharing a third of an original), shuffled."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)] + ["the", "of", "and", "to", "a", "in"] * 50
    docs = [random_doc(rng, vocab, rng.randint(120, 400)) for _ in range(n_base)]
    for _ in range(n_base // 2):
        docs.append(edit(rng, rng.choice(docs), vocab, rng.uniform(0.002, 0.02)))
    for _ in range(n_base // 4):
        src = rng.choice(docs)
        docs.append(src[: len(src) // 3] + random_doc(rng, vocab, len(src)))
    rng.shuffle(docs)
    texts = [" ".join(w) for w in docs]
    for _ in range(n_base // 10):  # exact duplicates up to case and whitespace, placed after their source
        i = rng.randrange(len(texts))
        texts.insert(rng.randrange(i + 1, len(texts) + 1), "  " + texts[i].upper().replace(" ", "\n "))
    return texts


def true_jaccard_duplicates(texts: list[str], threshold: float, ngram: int = 5) -> tuple[list[bool], list[float]]:
    """Ground truth by exact set Jaccard: is any earlier document at least `threshold` similar?"""
    sets = [set(D.shingles(t, ngram)) for t in texts]
    index: dict[bytes, list[int]] = defaultdict(list)
    best = []
    for i, s in enumerate(sets):
        shared: dict[int, int] = defaultdict(int)
        for sh in s:
            for j in index[sh]:
                shared[j] += 1
        best.append(max((c / (len(s) + len(sets[j]) - c) for j, c in shared.items()), default=0.0))
        for sh in s:
            index[sh].append(i)
    return [b >= threshold for b in best], best


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch_bit_for_bit(scheme, datasketch):
    texts = planted_corpus(n_base=20)[:30] + ["", "one", "two words only", "Ünïcödé wörds too, ÄÖÜ."]
    a, b = D.permutations(128, seed=3, scheme=scheme)
    ref = datasketch.MinHash(num_perm=128, seed=3, scheme=scheme)
    assert np.array_equal(ref.permutations[0], a) and np.array_equal(ref.permutations[1], b)
    hashes, offsets = D.shingle_hashes(texts, 5)
    sigs = D.signatures(hashes, offsets, a, b)
    for i, text in enumerate(texts):
        m = datasketch.MinHash(num_perm=128, seed=3, scheme=scheme, hashfunc=int)
        m.update_batch(hashes[offsets[i] : offsets[i + 1]].tolist())
        assert np.array_equal(m.hashvalues, sigs[i]), i
        assert offsets[i + 1] - offsets[i] == len(D.shingles(text, 5))


def test_shingle_hash_is_position_independent():
    h1, _ = D.shingle_hashes(["alpha beta gamma delta epsilon zeta"], 5)
    h2, _ = D.shingle_hashes(["x y alpha beta gamma delta epsilon"], 5)
    assert h1[0] == h2[2] and h1[1] not in h2
    assert len(set(D.shingle_hashes([" ".join(f"w{i}" for i in range(5000))], 1)[0].tolist())) == 5000


def test_jaccard_estimates_agree_with_datasketch_default_hashing(datasketch):
    """datasketch with its own SHA-1 shingle hashing vs ours: both within sampling error of the truth."""
    rng = random.Random(1)
    vocab = [f"v{i}" for i in range(2000)]
    num_perm, errors_ours, errors_ds = 256, [], []
    for _ in range(40):
        base = random_doc(rng, vocab, 300)
        other = edit(rng, base, vocab, rng.uniform(0.0, 0.08))
        ta, tb = " ".join(base), " ".join(other)
        sa, sb = set(D.shingles(ta, 5)), set(D.shingles(tb, 5))
        truth = len(sa & sb) / len(sa | sb)
        ours = D.minhash([ta, tb], num_perm=num_perm)
        est = float(D.jaccard_estimate(ours[0], ours[1]))
        ma, mb = datasketch.MinHash(num_perm=num_perm), datasketch.MinHash(num_perm=num_perm)
        ma.update_batch(sa)
        mb.update_batch(sb)
        sigma = max(np.sqrt(truth * (1 - truth) / num_perm), 1 / num_perm)
        errors_ours.append((est - truth) / sigma)
        errors_ds.append((ma.jaccard(mb) - truth) / sigma)
    assert max(map(abs, errors_ours)) < 4.5 and max(map(abs, errors_ds)) < 4.5
    assert abs(np.mean(errors_ours)) < 1.0  # unbiased: mean z-score near 0 over 40 pairs
    assert 0.4 < np.std(errors_ours) < 1.6  # and the spread a binomial estimator should have


def test_lsh_params_match_datasketch(datasketch):
    from datasketch.lsh import _optimal_param

    for t, n, w in [(0.5, 128, (0.5, 0.5)), (0.7, 128, (0.1, 0.9)), (0.8, 64, (0.5, 0.5)), (0.9, 256, (0.3, 0.7))]:
        assert D.optimal_params(t, n, *w) == _optimal_param(t, n, *w)


def test_planted_near_duplicates_precision_and_recall():
    texts = planted_corpus(seed=0)
    cfg = DedupConfig(threshold=0.7, num_perm=128, ngram=5)
    truth, best = true_jaccard_duplicates(texts, cfg.threshold)
    dd = D.Deduplicator(cfg)
    flags: list[bool] = []
    for i in range(0, len(texts), 64):  # streaming, in batches
        flags += dd(texts[i : i + 64])
    tp = sum(f and t for f, t in zip(flags, truth, strict=True))
    precision, recall = tp / sum(flags), tp / sum(truth)
    assert sum(truth) > 100 and dd.stats.exact_removed > 0 and dd.stats.near_removed > 0
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    # hard negatives (a third shared) really are in the corpus and are kept
    assert any(0.1 < b < 0.5 for b in best)
    assert not any(f for f, b in zip(flags, best, strict=True) if b < 0.5)


def test_batches_do_not_change_the_result_and_first_occurrence_wins():
    texts = planted_corpus(seed=2, n_base=60)
    one = D.Deduplicator(DedupConfig())(texts)
    dd = D.Deduplicator(DedupConfig())
    many = [f for i in range(0, len(texts), 7) for f in dd(texts[i : i + 7])]
    assert one == many
    assert D.Deduplicator(DedupConfig())(["same text here", "other text", "Same   TEXT here"]) == [False, False, True]
    # near-only mode also catches exact copies; empty documents are never near-duplicates
    near_only = D.Deduplicator(DedupConfig(exact=False))
    assert near_only([texts[0], texts[0], "", ""]) == [False, True, False, False]


class DictIndexDedup:
    """The decision rule with a plain set and dict (the index before it moved to numpy tables),
    one document at a time: the reference the compact tables must reproduce exactly."""

    def __init__(self, dd: D.Deduplicator, max_bucket: int) -> None:
        self.dd, self.max_bucket = dd, max_bucket
        self.exact: set[bytes] = set()
        self.index: dict[int, list[int]] = {}
        self.sigs: list[np.ndarray] = []
        self.stats = D.DedupStats()

    def __call__(self, texts):
        fp = self.dd.fingerprints(texts)
        out = []
        for i in range(fp.n):
            self.stats.seen += 1
            if fp.exact is not None:
                if fp.exact[i] in self.exact:
                    self.stats.exact_removed += 1
                    out.append(True)
                    continue
                self.exact.add(fp.exact[i])
            dup = False
            if fp.sigs is not None and not fp.empty[i]:
                keys = fp.band_keys[i].tolist()
                found = {d for k in keys for d in self.index.get(k, ())}
                if found:
                    est = [(self.sigs[d] == fp.sigs[i]).mean() for d in found]
                    self.stats.candidates += len(found)
                    self.stats.rejected_candidates += sum(e < self.dd.cfg.threshold for e in est)
                    dup = max(est) >= self.dd.cfg.threshold
                self.sigs.append(fp.sigs[i])
                for k in keys:
                    bucket = self.index.get(k)
                    if bucket is None:
                        self.index[k] = [len(self.sigs) - 1]
                    elif not dup and len(bucket) < self.max_bucket:
                        bucket.append(len(self.sigs) - 1)
                self.stats.near_removed += dup
            out.append(dup)
        return out


@pytest.mark.parametrize("batch,max_bucket", [(1, 64), (13, 2), (128, 3)])
def test_compact_tables_decide_exactly_as_a_dict_index(batch, max_bucket, monkeypatch):
    # Few bands of one row: most documents share band keys, so buckets fill up to their cap, probe
    # runs are long, and the tables grow many times from a small start.
    monkeypatch.setattr(D.Deduplicator, "MAX_BUCKET", max_bucket)
    monkeypatch.setattr(D._MultiMap.__init__, "__defaults__", (16,))
    monkeypatch.setattr(D._ExactSet.__init__, "__defaults__", (16,))
    assert len(D._MultiMap().keys) == len(D._ExactSet().table) == 16
    texts = planted_corpus(seed=3, n_base=120)
    texts += texts[:40] + ["", "", "word"]  # exact copies across batches, empty documents
    cfg = DedupConfig(threshold=0.5, num_perm=32, bands=8, rows=1, ngram=1)
    ours = D.Deduplicator(cfg)
    ref = DictIndexDedup(D.Deduplicator(cfg), max_bucket)
    got = [f for i in range(0, len(texts), batch) for f in ours(texts[i : i + batch])]
    assert got == ref(texts)
    assert ours.stats == ref.stats and ours.stats.candidates > 1000 and ours.stats.exact_removed >= 40
    assert ours._index.size == sum(map(len, ref.index.values())) and len(ours._index.keys) > 16


def test_index_survives_pickling_and_old_checkpoints():
    texts = planted_corpus(seed=4, n_base=60)
    half = len(texts) // 2
    whole = D.Deduplicator(DedupConfig())
    expected = whole(texts[:half]) + whole(texts[half:])
    dd = D.Deduplicator(DedupConfig())
    first = dd(texts[:half])
    resumed = pickle.loads(pickle.dumps(dd))
    assert first + resumed(texts[half:]) == expected
    # A checkpoint from before the numpy tables held a set of exact keys and a dict of band keys.
    ref = DictIndexDedup(D.Deduplicator(DedupConfig()), D.Deduplicator.MAX_BUCKET)
    ref(texts[:half])
    old = D.Deduplicator(DedupConfig())
    state = dict(old.__dict__, _exact=set(ref.exact), _n=len(ref.sigs), stats=ref.stats,
                 _index={k: v[0] if len(v) == 1 else v for k, v in ref.index.items()})
    state["_sigs"] = np.array(ref.sigs)
    old.__setstate__(state)
    assert first + old(texts[half:]) == expected
