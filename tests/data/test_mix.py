from __future__ import annotations

import numpy as np
import pytest

from scratchllm.data.mix import plan_mixture, select_documents
from scratchllm.errors import ScratchError


def test_plan_downsamples_to_the_weights_without_repeats():
    plan = plan_mixture({"prose": (700, 10), "code": (5000, 20)}, {"prose": 0.7, "code": 0.3})
    assert plan["prose"].target_tokens == 700 and plan["code"].target_tokens == 300
    assert plan["prose"].weight == pytest.approx(0.7)


def test_plan_with_total_upsamples_and_natural_proportions():
    plan = plan_mixture({"prose": (100, 4), "code": (1000, 8)}, {"prose": 1, "code": 1}, total_tokens=1000)
    assert plan["prose"].target_tokens == 500 and plan["code"].target_tokens == 500
    plan = plan_mixture({"prose": (100, 4), "code": (300, 8)}, {"prose": 0.5, "code": 0.5}, max_upsample=2.0)
    assert plan["prose"].target_tokens == 200 and plan["code"].target_tokens == 200
    natural = plan_mixture({"prose": (100, 4), "code": (300, 8)}, {})
    assert natural["prose"].target_tokens == 100 and natural["code"].target_tokens == 300


def test_plan_errors_and_dropped_domains():
    with pytest.raises(ScratchError, match="'code', but no documents of it survived"):
        plan_mixture({"prose": (100, 1), "code": (0, 0)}, {"prose": 0.5, "code": 0.5})
    plan = plan_mixture({"prose": (100, 1), "code": (50, 1)}, {"prose": 1.0})
    assert plan["code"].target_tokens == 0 and plan["prose"].target_tokens == 100


def test_select_documents_hits_the_target():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 150, size=200)
    total = int(lengths.sum())
    for target in (0, total // 3, total, int(2.5 * total)):
        idx = select_documents(lengths, target, rng)
        got = int(lengths[idx].sum())
        assert abs(got - target) <= 150, (target, got)
        counts = np.bincount(idx, minlength=len(lengths))
        assert counts.max() - counts.min() <= 1  # repeats are spread evenly
    assert set(select_documents(lengths, total, rng).tolist()) == set(range(200))
