from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from scratchllm.errors import ScratchError
from scratchllm.eval.ngram import BigramLM, KneserNeyLM, UnigramLM, build_baselines

V = 40


def _docs(seed: int, n: int = 60) -> list[list[int]]:
    """A little 'language': mostly tokens 0-19; the previous token narrows the next to two choices
    and the one before picks between them, so each extra token of context helps."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        doc = [rng.randrange(1, V), rng.randrange(1, V)]
        for _ in range(rng.randrange(5, 40)):
            nxt = (doc[-1] * 7 + doc[-2] % 2) % 20 if rng.random() < 0.8 else rng.randrange(V)
            doc.append(nxt)
        docs.append(doc)
    return docs


@pytest.mark.parametrize("model", [UnigramLM(V, 0), BigramLM(V, 0), KneserNeyLM(V, 0, 2), KneserNeyLM(V, 0, 3),
                                   KneserNeyLM(V, 0, 4)])
def test_probabilities_sum_to_one_for_any_history(model):
    model.fit(_docs(0))
    rng = random.Random(1)
    histories = [[], [0], [0, 0, 0], [5, 12, 19], [39, 39, 39]] + [[rng.randrange(V) for _ in range(3)] for _ in range(20)]
    for h in histories:
        h = h[-(model.order - 1):] if model.order > 1 else []
        if model.order > 1 and len(h) < model.order - 1:
            h = [0] * (model.order - 1 - len(h)) + h
        total = sum(model.prob(h, w) for w in range(V))
        assert total == pytest.approx(1.0, abs=1e-9), h
        assert all(model.prob(h, w) > 0 for w in range(V))


def test_more_context_helps_on_held_out_text():
    train, test = _docs(0, 200), _docs(99, 40)
    n = sum(len(d) for d in test)
    ppl = {m.name: math.exp(-sum(m.logprob(d) for d in test) / n) for m in build_baselines(train, V, 0)}
    assert ppl["kneser_ney_3"] < ppl["bigram"] < ppl["unigram"] < V


def test_kneser_ney_lower_order_uses_continuation_counts():
    # token 9 is frequent but only ever follows token 8; token 5 follows many tokens
    docs = [[8, 9]] * 50 + [[t, 5] for t in range(1, 8)]
    kn = KneserNeyLM(V, 0, 2).fit(docs)
    unseen_history = [30]
    assert kn.prob(unseen_history, 5) > kn.prob(unseen_history, 9)
    assert UnigramLM(V, 0).fit(docs).prob([], 9) > UnigramLM(V, 0).fit(docs).prob([], 5)


def test_unknown_baseline_and_empty_text():
    with pytest.raises(ScratchError, match="unknown baseline"):
        build_baselines([[1, 2]], V, 0, ["trigram-magic"])
    with pytest.raises(ScratchError, match="empty"):
        KneserNeyLM(V, 0, 3).fit([])


def test_kneser_ney_by_hand():
    """Interpolated modified KN worked out on paper (Chen & Goodman 1998) for a four-token document."""
    kn = KneserNeyLM(5, 0, 2).fit([[1, 2, 1, 3]])  # padded: 0 1 2 1 3; every bigram seen once
    # too few counts of counts to estimate discounts: the defaults D1, D2, D3+ = 0.5, 1, 1.5
    assert kn.discounts == [(0.5, 1.0, 1.5), (0.5, 1.0, 1.5)]
    # unigram level uses continuation counts: 1 follows {0, 2}, 2 and 3 follow {1} -> N1+ = 2, 1, 1 (total 4);
    # gamma = (D1 * 2 types seen once + D2 * 1 type seen twice) / 4 = 0.5, times uniform 1/5
    p_uni = {0: 0.1, 1: (2 - 1) / 4 + 0.1, 2: 0.5 / 4 + 0.1, 3: 0.5 / 4 + 0.1, 4: 0.1}
    for w, p in p_uni.items():
        assert kn.prob([7], w) == pytest.approx(p)  # unseen history: the lower order alone
    # after token 1: followers 2 and 3 once each; gamma = D1 * 2 / 2 = 0.5
    assert kn.prob([1], 2) == pytest.approx((1 - 0.5) / 2 + 0.5 * p_uni[2])
    assert kn.prob([1], 4) == pytest.approx(0.5 * p_uni[4])
    # discounts from counts of counts: Y = n1 / (n1 + 2 n2), D_k = k - (k+1) Y n_{k+1} / n_k
    counts = Counter({(i,): c for i, c in enumerate([1] * 6 + [2] * 3 + [3] * 2 + [4])})
    y = 6 / (6 + 2 * 3)
    assert KneserNeyLM._discounts(counts) == pytest.approx((1 - 2 * y * 3 / 6, 2 - 3 * y * 2 / 3, 3 - 4 * y * 1 / 2))
