"""Speculative decoding: exact for greedy; the accept/reject rule leaves the target distribution intact."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.generate import SamplingParams, generate, stream
from scratchllm.infer.speculative import accept_reject, speculative_generate, speculative_stream

PROMPT = [1, 2, 3, 4, 5]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_equals_target_greedy(make_model, k):
    target = make_model(seed=0)
    draft = make_model(seed=1, n_layers=1)  # an unrelated draft: many rejections
    params = SamplingParams(max_new_tokens=21, temperature=0)
    expected = generate(target, [PROMPT], params)[0]
    assert speculative_generate(target, draft, PROMPT, params, k=k).tokens == expected
    # A perfect draft (the target itself): everything accepted, bonus tokens included.
    assert speculative_generate(target, target, PROMPT, params, k=k).tokens == expected


def test_speculative_stream_stops_like_plain_stream(make_model):
    target, draft = make_model(seed=0), make_model(seed=2, n_layers=1)
    free = generate(target, [PROMPT], SamplingParams(max_new_tokens=15, temperature=0))[0]
    params = SamplingParams(max_new_tokens=15, temperature=0, stop_token_ids=[free[6]])
    plain = [(d.token_id, d.finish_reason) for d in stream(target, PROMPT, params)]
    spec = [(d.token_id, d.finish_reason) for d in speculative_stream(target, draft, PROMPT, params, k=4)]
    assert spec == plain and spec[-1][1] == "stop"


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    from scipy.stats import chisquare

    keep = probs > 0
    assert counts[~keep].sum() == 0  # never a token of probability zero
    expected = probs[keep].double() / probs[keep].double().sum() * counts.sum()
    return float(chisquare(counts[keep].double(), expected).pvalue)


def test_accept_reject_output_is_target_distributed():
    """Fixed (context-free) draft and target distributions over 4 tokens, k=2: the first two emitted
    tokens must be independent draws from q_1 and q_2 although the drafts come from the very different p."""
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.2, 0.7]])
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.0, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25]])
    n, joint = 6000, torch.zeros(4, 4)
    for _ in range(n):
        drafts = [int(torch.multinomial(p[0], 1, generator=g)), int(torch.multinomial(p[1], 1, generator=g))]
        out = accept_reject(drafts, p, q, g)
        if len(out) == 1:  # first draft rejected: the second token comes from a fresh target step (q_2 here)
            out.append(int(torch.multinomial(q[1], 1, generator=g)))
        joint[out[0], out[1]] += 1
    assert _chi_square_p(joint.flatten(), (q[0][:, None] * q[1][None, :]).flatten()) > 1e-3
    # The same test rejects the draft's own distribution: it has the power to catch a wrong rule.
    assert _chi_square_p(joint.sum(1), p[0]) < 1e-6


def test_speculative_sampling_matches_target_distribution(make_model):
    """End to end on a vocab of 5: the distribution of the 2nd and 3rd sampled tokens equals plain sampling's."""
    pytest.importorskip("scipy")
    target = make_model(seed=0, vocab_size=5, init_std=0.5)
    draft = make_model(seed=3, vocab_size=5, init_std=0.5, n_layers=1)
    with torch.no_grad():  # exact target probabilities of token 2 given (prompt, first token)
        first_logits = target(torch.tensor([PROMPT[:3]]))[0, -1]
    first = int(first_logits.argmax())
    with torch.no_grad():
        q2 = target(torch.tensor([PROMPT[:3] + [first]]))[0, -1].softmax(-1)
    counts = torch.zeros(5)
    n = 0
    for seed in range(800):
        out = speculative_generate(target, draft, PROMPT[:3], SamplingParams(max_new_tokens=3, seed=seed), k=2).tokens
        if out[0] == first:
            counts[out[1]] += 1
            n += 1
    assert n > 60
    assert _chi_square_p(counts, q2) > 1e-3


def test_speculative_rejects_bad_setups(make_model):
    target = make_model()
    with pytest.raises(ScratchError, match="vocab_size"):
        speculative_generate(target, make_model(vocab_size=50), PROMPT, SamplingParams(max_new_tokens=8))
    with pytest.raises(ScratchError, match="penalties"):
        speculative_generate(target, target, PROMPT, SamplingParams(max_new_tokens=8, repetition_penalty=1.2))
    with pytest.raises(ScratchError, match="k must"):
        speculative_generate(target, target, PROMPT, SamplingParams(max_new_tokens=8), k=0)
