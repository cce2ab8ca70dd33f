"""DPO: the loss formulas, the objective on the Trainer, and the reference-model checks."""

from __future__ import annotations

import math

import pytest
import torch

from scratchllm.align.dpo import DPOObjective, check_reference, dpo_loss, sequence_logps, token_logps
from scratchllm.errors import ScratchError


def test_loss_formulas_by_hand():
    c, r = torch.tensor([-3.0, -1.0]), torch.tensor([-4.0, -0.5])
    rc, rr = torch.tensor([-3.5, -1.0]), torch.tensor([-3.0, -1.0])
    beta = 0.5
    delta = (c - rc) - (r - rr)  # [1.5, -0.5]
    losses, reward_c, reward_r = dpo_loss(c, r, rc, rr, beta)
    assert torch.allclose(losses, torch.log1p(torch.exp(-beta * delta)))
    assert torch.allclose(reward_c, beta * (c - rc)) and torch.allclose(reward_r, beta * (r - rr))
    e = 0.1
    smooth, _, _ = dpo_loss(c, r, rc, rr, beta, label_smoothing=e)
    assert torch.allclose(smooth, (1 - e) * torch.log1p(torch.exp(-beta * delta))
                          + e * torch.log1p(torch.exp(beta * delta)))
    lengths = torch.tensor([3.0, 2.0])
    ipo, _, _ = dpo_loss(c, r, rc, rr, beta, "ipo", chosen_lengths=lengths, rejected_lengths=torch.tensor([1.0, 4.0]))
    avg = (c - rc) / lengths - (r - rr) / torch.tensor([1.0, 4.0])
    assert torch.allclose(ipo, (avg - 1 / (2 * beta)) ** 2)


def test_equal_policy_and_reference_give_log2():
    x = torch.randn(5)
    losses, rc, rr = dpo_loss(x, x - 1, x, x - 1, beta=0.3)
    assert torch.allclose(losses, torch.full((5,), math.log(2))) and rc.abs().max() == 0 == rr.abs().max()


def test_sequence_logps_count_only_the_reply(make_model):
    model = make_model().eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 0, 1, 1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).float(), -1)
        expected = logp[0, 2, 8] + logp[0, 3, 9]
        assert torch.allclose(sequence_logps(model, ids, mask), expected.reshape(1), atol=1e-6)
        assert token_logps(model, ids).shape == (1, 4)


def test_objective_trains_the_policy_only(make_model, tokenizer):
    from scratchllm.align.data import collate_pairs, encode_pairs, make_pair

    policy, reference = make_model(seed=1), make_model(seed=1)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    batch = collate_pairs(encode_pairs([make_pair("q", "good", "bad"), make_pair("r", "yes", "no")], tokenizer, 64),
                          tokenizer.pad_id)
    objective = DPOObjective(reference, beta=0.1)
    loss, metrics = objective(policy, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)  # identical weights: no preference yet
    loss.backward()
    assert all(p.grad is None for p in reference.parameters())
    assert policy.tok_emb.weight.grad is not None and policy.tok_emb.weight.grad.abs().sum() > 0
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    opt.step()
    loss2, metrics2 = objective(policy, batch)
    assert loss2.item() < loss.item() and metrics2["rewards/margins"] > 0
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())


def test_reference_must_match_the_policy(make_model):
    with pytest.raises(ScratchError, match="does not match the policy.*d_model: 48 vs 64") as e:
        check_reference(make_model(), make_model(d_model=64))
    assert "SFT" in e.value.hint
    check_reference(make_model(seed=1), make_model(seed=2))  # same shape, other weights: fine


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"beta": 0.0}, "beta must be > 0"),
    ({"loss_type": "hinge"}, "unknown 'hinge'"),
    ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "no effect"),
    ({"sft_coef": -1.0}, "sft_coef must be >= 0"),
])
def test_bad_settings(make_model, kwargs, message):
    with pytest.raises(ScratchError, match=message):
        DPOObjective(make_model(), **kwargs)
