from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.eval.metrics import (
    extract_flexible,
    extract_strict,
    mean_stderr,
    normalize_number,
    pass_at_k,
    perplexity_metrics,
)


def _paper_formula(n: int, c: int, k: int) -> float:
    """Chen et al. 2021, eq. (1): E[1 - C(n-c, k) / C(n, k)], in exact arithmetic."""
    return float(1 - Fraction(comb(n - c, k), comb(n, k)))


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (1, 0, 1, 0.0), (1, 1, 1, 1.0), (10, 0, 1, 0.0), (10, 10, 10, 1.0),
    (10, 1, 1, 0.1), (10, 5, 1, 0.5), (2, 1, 2, 1.0), (4, 1, 2, 0.5),
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (200, 13, 10, _paper_formula(200, 13, 10)), (200, 13, 100, _paper_formula(200, 13, 100)),
])
def test_pass_at_k_known_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_paper_formula(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(_paper_formula(n, c, k), abs=1e-9)


def test_pass_at_1_is_fraction_correct_and_k_is_validated():
    assert pass_at_k(7, 3, 1) == pytest.approx(3 / 7)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_mean_stderr_matches_sample_formula():
    mean, se = mean_stderr([1.0, 0.0, 1.0, 1.0])
    assert mean == 0.75 and se == pytest.approx((0.25 / 4) ** 0.5)


def test_perplexity_metrics():
    m = perplexity_metrics(-10.0, n_tokens=5, n_words=4, n_bytes=20)
    assert m["token_perplexity"] == pytest.approx(2.718281828 ** 2)
    assert m["bits_per_byte"] == pytest.approx(10 / 20 / 0.6931471805599453)


@pytest.mark.parametrize(("text", "strict", "flexible"), [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7", "7"),
    ("The total is $1,234.\n#### 1,234", "1234", "1234"),
    ("So the answer is 26.25 dozen.", None, "26.25"),
    ("#### -3", "-3", "-3"),
    ("no numbers here", None, None),
    ("It costs 5.00 dollars. #### 5.00", "5", "5"),
])
def test_answer_extraction(text, strict, flexible):
    assert extract_strict(text, r"#### (-?[0-9.,]+)") == strict
    assert extract_flexible(text) == flexible


def test_normalize_number():
    assert normalize_number(" $1,000. ") == "1000"
    assert normalize_number("0.50") == "0.5"
    assert normalize_number("abc") == "abc"
