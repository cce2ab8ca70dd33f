"""Count-based baselines on the model's own tokenizer: unigram, bigram and Kneser–Ney n-gram models.

Every perplexity we report gets these next to it: a transformer that does not beat an interpolated
Kneser–Ney trigram trained on the same text has not learned much yet. All three are proper
distributions over the whole vocabulary (tested: probabilities sum to 1 for any history).

* ``UnigramLM``: add-one (Laplace) smoothed token frequencies.
* ``BigramLM``: Witten–Bell interpolation of bigram and unigram estimates (no tuned constants).
* ``KneserNeyLM``: interpolated modified Kneser–Ney (Chen & Goodman 1998) of any order, with three
  discounts per order estimated from counts of counts, continuation counts for the lower orders and
  a uniform distribution at the bottom.

Each document is scored as the model is: every token is predicted from the tokens before it in the
same document, the history padded with the prefix token (BOS).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from scratchllm.errors import ScratchError


class NgramLM:
    name = "ngram"
    order = 1

    def __init__(self, vocab_size: int, prefix_id: int) -> None:
        if vocab_size < 1:
            raise ScratchError("n-gram baseline: vocab_size must be positive")
        self.V = vocab_size
        self.prefix_id = prefix_id

    def fit(self, documents: Iterable[Sequence[int]]) -> NgramLM:
        raise NotImplementedError

    def prob(self, history: Sequence[int], token: int) -> float:
        raise NotImplementedError

    def _padded(self, doc: Sequence[int]) -> list[int]:
        return [self.prefix_id] * (self.order - 1) + list(doc)

    def logprob(self, doc: Sequence[int]) -> float:
        """Natural-log probability of a document's tokens."""
        seq = self._padded(doc)
        n = self.order - 1
        return sum(math.log(self.prob(seq[i - n:i] if n else (), seq[i])) for i in range(n, len(seq)))


class UnigramLM(NgramLM):
    name = "unigram"
    order = 1

    def fit(self, documents: Iterable[Sequence[int]]) -> UnigramLM:
        self.counts: Counter[int] = Counter()
        for doc in documents:
            self.counts.update(doc)
        self.total = sum(self.counts.values())
        return self

    def prob(self, history: Sequence[int], token: int) -> float:
        return (self.counts[token] + 1) / (self.total + self.V)


class BigramLM(NgramLM):
    """P(w|v) = (c(v,w) + T(v) P_uni(w)) / (c(v) + T(v)), T(v) = distinct followers of v (Witten–Bell)."""

    name = "bigram"
    order = 2

    def fit(self, documents: Iterable[Sequence[int]]) -> BigramLM:
        docs = [list(d) for d in documents]
        self.unigram = UnigramLM(self.V, self.prefix_id).fit(docs)
        self.pairs: dict[int, Counter[int]] = defaultdict(Counter)
        for doc in docs:
            seq = self._padded(doc)
            for v, w in zip(seq, seq[1:]):
                self.pairs[v][w] += 1
        self.context_total = {v: sum(c.values()) for v, c in self.pairs.items()}
        return self

    def prob(self, history: Sequence[int], token: int) -> float:
        p_uni = self.unigram.prob((), token)
        followers = self.pairs.get(history[-1])
        if not followers:
            return p_uni
        types = len(followers)
        return (followers[token] + types * p_uni) / (self.context_total[history[-1]] + types)


class KneserNeyLM(NgramLM):
    """Interpolated modified Kneser–Ney of order ``order`` (default 3)."""

    name = "kneser_ney"

    def __init__(self, vocab_size: int, prefix_id: int, order: int = 3) -> None:
        super().__init__(vocab_size, prefix_id)
        if order < 1:
            raise ScratchError(f"Kneser–Ney order must be >= 1, got {order}")
        self.order = order
        self.name = f"kneser_ney_{order}"

    def fit(self, documents: Iterable[Sequence[int]]) -> KneserNeyLM:
        n = self.order
        top: Counter[tuple[int, ...]] = Counter()
        for doc in documents:
            seq = self._padded(doc)
            for i in range(n - 1, len(seq)):
                top[tuple(seq[i - n + 1:i + 1])] += 1
        if not top:
            raise ScratchError("the baseline training text is empty", "give --baseline-text some text")
        # counts[k]: n-grams of length k+1 -> count; raw counts at the top order, continuation
        # counts (number of distinct left extensions) below it.
        counts: list[Counter[tuple[int, ...]]] = [Counter() for _ in range(n)]
        counts[n - 1] = top
        for k in range(n - 1, 0, -1):
            for gram in counts[k]:
                counts[k - 1][gram[1:]] += 1
        self.discounts = [self._discounts(c) for c in counts]
        # Per history: total count, and how many continuations occur once, twice, 3+ times.
        self.tables: list[dict[tuple[int, ...], Counter[int]]] = []
        self.history_stats: list[dict[tuple[int, ...], tuple[int, int, int, int]]] = []
        for c in counts:
            table: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
            for gram, value in c.items():
                table[gram[:-1]][gram[-1]] = value
            stats = {}
            for h, followers in table.items():
                vals = followers.values()
                stats[h] = (sum(vals), sum(v == 1 for v in vals), sum(v == 2 for v in vals), sum(v >= 3 for v in vals))
            self.tables.append(dict(table))
            self.history_stats.append(stats)
        return self

    @staticmethod
    def _discounts(counts: Counter[tuple[int, ...]]) -> tuple[float, float, float]:
        """D1, D2, D3+ from counts of counts (Chen & Goodman), clamped to [0.05, c].

        A discount of zero would leave no mass for the lower orders (zero probabilities for unseen
        continuations), so each is kept at least 0.05; with too few counts for the estimate the
        common defaults 0.5, 1, 1.5 are used.
        """
        cc = Counter(v for v in counts.values() if v <= 4)
        n1, n2, n3, n4 = (cc.get(i, 0) for i in (1, 2, 3, 4))
        if not (n1 and n2 and n3 and n4):
            return (0.5, 1.0, 1.5)
        y = n1 / (n1 + 2 * n2)
        d1, d2, d3 = 1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3
        return (min(max(d1, 0.05), 1.0), min(max(d2, 0.05), 2.0), min(max(d3, 0.05), 3.0))

    def prob(self, history: Sequence[int], token: int) -> float:
        p = 1.0 / self.V  # order 0: uniform
        hist = tuple(history[len(history) - self.order + 1:]) if self.order > 1 else ()
        for k in range(self.order):  # k = history length, lowest order first
            h = hist[len(hist) - k:] if k else ()
            stats = self.history_stats[k].get(h)
            if stats is None:
                continue  # unseen history: keep the lower-order estimate
            total, n1, n2, n3 = stats
            d1, d2, d3 = self.discounts[k]
            c = self.tables[k][h].get(token, 0)
            d = 0.0 if c == 0 else d1 if c == 1 else d2 if c == 2 else d3
            gamma = (d1 * n1 + d2 * n2 + d3 * n3) / total
            p = max(c - d, 0.0) / total + gamma * p
        return p


def build_baselines(documents: Sequence[Sequence[int]], vocab_size: int, prefix_id: int,
                    names: Sequence[str] = ("unigram", "bigram", "kneser_ney")) -> list[NgramLM]:
    """Fit the named baselines (``kneser_ney`` or ``kneser_ney_N`` for order N) on token documents."""
    models: list[NgramLM] = []
    for name in names:
        if name == "unigram":
            models.append(UnigramLM(vocab_size, prefix_id))
        elif name == "bigram":
            models.append(BigramLM(vocab_size, prefix_id))
        elif name.startswith("kneser_ney") or name in ("kn", "kn3"):
            suffix = name.rpartition("_")[2] if name.startswith("kneser_ney_") else "3"
            if not suffix.isdigit():
                raise ScratchError(f"unknown baseline {name!r}", "use kneser_ney or kneser_ney_N (N = order)")
            models.append(KneserNeyLM(vocab_size, prefix_id, int(suffix)))
        else:
            raise ScratchError(f"unknown baseline {name!r}", "choose from unigram, bigram, kneser_ney, kneser_ney_N")
    for m in models:
        m.fit(documents)
    return models
