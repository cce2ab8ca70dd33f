"""Domain mixing: choose how many tokens of each domain go into the training mixture.

Given the tokens available per domain and weights (e.g. prose 0.7, code 0.3), every domain gets
``weight * total`` tokens. A domain with more than that is down-sampled (a random subset of its
documents); one with less is up-sampled (all of its documents repeated, plus a random part). With
``total_tokens = 0`` the total is the largest one that needs no domain repeated more than
``max_upsample`` times, so the default (1.0) only ever down-samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchllm.errors import ScratchError


@dataclass
class DomainPlan:
    domain: str
    weight: float  # normalised
    available_tokens: int
    available_docs: int
    target_tokens: int
    selected_tokens: int = 0
    selected_docs: int = 0

    @property
    def factor(self) -> float:
        """Selected / available tokens: < 1 down-sampled, > 1 up-sampled (repeated)."""
        return self.selected_tokens / self.available_tokens if self.available_tokens else 0.0


def plan_mixture(
    available: dict[str, tuple[int, int]],
    weights: dict[str, float],
    total_tokens: int = 0,
    max_upsample: float = 1.0,
) -> dict[str, DomainPlan]:
    """Target tokens per domain. ``available`` maps domain -> (tokens, documents)."""
    if not weights:  # natural proportions
        weights = {d: float(tok) for d, (tok, _) in available.items()}
    unknown = sorted(d for d, w in weights.items() if w > 0 and available.get(d, (0, 0))[0] == 0)
    if unknown:
        raise ScratchError(
            f"mix.weights gives weight to domain {unknown[0]!r}, but no documents of it survived "
            f"(domains with data: {', '.join(sorted(d for d, (t, _) in available.items() if t)) or 'none'})",
            "add a source for that domain, relax the filters, or remove it from mix.weights",
        )
    norm = sum(w for d, w in weights.items() if w > 0)
    if norm <= 0:
        raise ScratchError("no data to mix: every domain is empty or has weight 0", "check sources and filters")
    share = {d: weights.get(d, 0.0) / norm for d in available}
    if total_tokens == 0:
        total_tokens = int(min(available[d][0] * max_upsample / s for d, s in share.items() if s > 0))
    return {
        d: DomainPlan(d, share[d], tok, docs, int(round(share[d] * total_tokens)))
        for d, (tok, docs) in available.items()
    }


def select_documents(lengths: np.ndarray, target_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of documents (with repeats when up-sampling) whose lengths add up to about ``target_tokens``.

    Whole copies of the domain first, then a random subset of documents; the subset stops at the
    document that brings the sum closest to the target.
    """
    n, total = len(lengths), int(lengths.sum())
    if n == 0 or target_tokens <= 0 or total == 0:
        return np.zeros(0, np.int64)
    repeats, remaining = divmod(target_tokens, total)
    perm = rng.permutation(n)
    cum = np.cumsum(lengths[perm])
    k = int(np.searchsorted(cum, remaining))  # cum[k] >= remaining
    if k < n and (cum[k] - remaining) < (remaining - (cum[k - 1] if k else 0)):
        k += 1
    return np.concatenate([np.tile(np.arange(n), repeats), perm[:k]]).astype(np.int64)
