"""The comparison's drift metrics: KL to the reference on sampled held-out replies, held-out reply perplexity."""

from __future__ import annotations

import math


from scratchllm.align.compare import drift


def test_drift_is_zero_against_itself_and_positive_against_another(make_model, tokenizer, parity_sets):
    policy = make_model(seed=1)
    heldout = parity_sets[1][:6]
    same = drift(policy, make_model(seed=1), tokenizer, heldout, max_new_tokens=4)
    assert abs(same["kl"]) < 1e-5
    other = drift(policy, make_model(seed=2), tokenizer, heldout, max_new_tokens=4)
    assert other["kl"] != same["kl"]
    assert other["heldout_ppl"] == same["heldout_ppl"]  # perplexity is the policy's alone
    # An untrained model: close to uniform over the 263-token vocabulary on the reply tokens.
    assert 100 < same["heldout_ppl"] < 1000
