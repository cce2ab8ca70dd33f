"""Metrics: accuracy with its standard error, pass@k, answer extraction, perplexity aggregates."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)), as lm-eval reports it."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 (HumanEval): 1 - C(n-c, k) / C(n, k).

    ``n`` samples of which ``c`` passed. Computed as a product, 1 - prod_{i=n-c+1}^{n} (1 - k/i),
    which is the paper's numerically stable form.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def perplexity_metrics(logprob: float, n_tokens: int, n_words: int, n_bytes: int) -> dict[str, float]:
    """Token/word/byte perplexity and bits per byte of a total log-likelihood (natural log)."""
    return {
        "token_perplexity": math.exp(-logprob / n_tokens) if n_tokens else float("nan"),
        "word_perplexity": math.exp(-logprob / n_words) if n_words else float("nan"),
        "byte_perplexity": math.exp(-logprob / n_bytes) if n_bytes else float("nan"),
        "bits_per_byte": -logprob / n_bytes / math.log(2) if n_bytes else float("nan"),
    }


def count_words(text: str) -> int:
    """Words as lm-eval counts them for word_perplexity: pieces between whitespace runs."""
    return len(re.split(r"\s+", text))


# --- answer extraction (GSM8K style) -------------------------------------------------------------------

_NUMBER = re.compile(r"-?[$0-9.,]{2,}|-?[0-9]+")


def normalize_number(text: str) -> str:
    """'$1,234.50.' -> '1234.5'; non-numbers are only stripped."""
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(t)
    except ValueError:
        return t
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def extract_strict(text: str, pattern: str) -> str | None:
    """The first group of ``pattern`` (e.g. ``#### (-?[0-9.,]+)``), normalised; None if absent."""
    m = re.search(pattern, text)
    if not m:
        return None
    return normalize_number(m.group(1) if m.groups() else m.group(0))


def extract_flexible(text: str) -> str | None:
    """The last number in the text (lm-eval's gsm8k "flexible-extract"), normalised."""
    found = [m.group(0) for m in _NUMBER.finditer(text)]
    found = [f for f in found if any(ch.isdigit() for ch in f)]
    return normalize_number(found[-1]) if found else None
